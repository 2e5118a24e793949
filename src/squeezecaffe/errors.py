"""The one exception type that reaches the user as a single line (the CLI prints it, exit code 2)."""


class UserError(Exception):
    """A problem with the user's input: a bad file, an unknown name, an impossible option.

    The message must be one line that names the file or value and says what is wrong,
    because the CLI prints it as-is instead of a traceback.
    """


class UnreadableImage(UserError):
    """An image file that cannot be decoded (empty, truncated, not an image): the one kind of bad input a
    folder-reading command may skip and list instead of stopping, as build-lmdb does."""


CAFFE_ENGINE_MISSING = ("--engine caffe: the pycaffe engine is not available (Caffe is not built here); "
                        "run `make caffe` to build it from source, or use --engine torch")
