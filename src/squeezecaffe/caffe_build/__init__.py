"""Building real Caffe (the brocolli-caffe 9.0.2 sources) from source against Debian's packages.

`recipe` says what is built and how (pinned sdist, source fixes, our CMakeLists.txt); `build` runs it into a
cache directory keyed by the recipe's hash; `locate` finds a finished build for the engine, tests and doctor.
"""
