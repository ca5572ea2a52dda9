"""The generation worker child process (imports torch): load a model, stream tokens; quantize."""
