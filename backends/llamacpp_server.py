"""llama-cpp-python's OpenAI-compatible server (``python -m harness.backends.llamacpp_server``, the
arguments of ``python -m llama_cpp.server``) with the in-process backend's weight-repacking
default (``LlamaCppSettings.repack``), so a served model runs the kernels an in-process one
runs, and runs at all where llama.cpp's AMX kernels crash."""

from harness.backends.llamacpp import repack_default, weight_repacking


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    with weight_repacking(repack_default()):
        serve()


if __name__ == "__main__":
    main()
