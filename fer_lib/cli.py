"""The `fer` command: one subcommand per study step.

    fer preprocess SOURCE --out data/fer2013.h5
    fer train --data data/fer2013.h5 --model vgg_small
    fer tune | ensemble | quantize | export | models | evaluate | predict | video | stream | synthetic | study | report
    fer CMD --help
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

# A user's mistake is one line on stderr and exit 2 (FER_DEBUG=1 shows the traceback instead).
# Each module owns its flags (add_arguments) and its action (run); imported lazily so
# `fer preprocess` doesn't pay for Optuna or OpenCV video imports.
COMMANDS = {
    "preprocess": ("fer_lib.data", "ingest FER-2013 into HDF5"),
    "train": ("fer_lib.train", "train a CNN, selecting on PublicTest"),
    "tune": ("fer_lib.tune", "Optuna hyper-parameter search on PublicTest"),
    "ensemble": ("fer_lib.ensemble", "average trained checkpoints into one, chosen on PublicTest"),
    "quantize": ("fer_lib.quantize", "int8 inference for a checkpoint, calibrated on Training faces"),
    "export": ("fer_lib.export", "a checkpoint to ONNX (uint8 faces in, probabilities out), optionally int8"),
    "models": ("fer_lib.assets", "the live model's card: its data, accuracy, input and limits"),
    "evaluate": ("fer_lib.evaluate", "metrics, calibration and figures for a checkpoint"),
    "predict": ("fer_lib.predict", "emotions of the faces in photos and folders"),
    "video": ("fer_lib.video", "emotion overlay on a video file or webcam"),
    "stream": ("fer_lib.stream", "score the label smoothers on a labelled face stream"),
    "synthetic": ("fer_lib.synthetic", "write procedural FER-shaped faces to an HDF5 file"),
    "study": ("fer_lib.study", "run notebooks 01-05 with papermill and render reports"),
    "report": ("fer_lib.report", "regenerate a README or findings-page block from the committed runs"),
}


# No space, no permission, an I/O failure, a file that vanished mid-run: the machine's state, not a
# mistake in the command line, so exit 1 (a missing input the user named is still exit 2).
RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM, errno.ESTALE}


def one_line(e) -> str:
    return " ".join(str(e).split())


def describe_os_error(e: OSError) -> str:
    """`path: cause` on one line ('data/x.h5: No space left on device'); HDF5's multi-line reports cut short."""
    cause = one_line(e.strerror or e)
    if e.errno == errno.ENOSPC:
        cause = cause if cause.startswith("No space left") else f"No space left on device ({cause[:80]})"
    return f"{e.filename}: {cause}" if e.filename else cause


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        print("usage: fer COMMAND [options]\n\ncommands:\n" +
              "\n".join(f"  {c:<{width}}  {h}" for c, (_, h) in COMMANDS.items()))
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    parser = argparse.ArgumentParser(prog=f"fer {argv[0]}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return module.run(args) or 0
    except OSError as e:
        if os.environ.get("FER_DEBUG"):
            raise
        print(f"fer {argv[0]}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1 if e.errno in RESOURCE_ERRNOS else 2  # the machine's fault, or a path the user gave
    except ValueError as e:  # UserError and the like: the message names the culprit
        if os.environ.get("FER_DEBUG"):
            raise
        print(f"fer {argv[0]}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fer {argv[0]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
