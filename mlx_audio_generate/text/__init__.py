"""Text encoders shared by the families (T5; T5Gemma; ...)."""
