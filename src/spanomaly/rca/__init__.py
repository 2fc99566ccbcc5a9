"""Root cause: evidence from traces and instances combined into ranked suspects."""
