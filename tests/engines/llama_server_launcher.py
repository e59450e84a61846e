"""Runs llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``, same
flags) with llama.cpp's extra CPU weight buffers off: see
``veil.engines.llamacpp.extra_buffer_types_disabled`` for the crash this avoids."""

from llama_cpp.server.__main__ import main

from veil.engines.llamacpp import extra_buffer_types_disabled

if __name__ == "__main__":
    with extra_buffer_types_disabled():
        main()
