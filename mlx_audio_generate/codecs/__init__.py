"""Audio codecs / VAEs shared by the families, behind encode/decode (EnCodec, Oobleck, ...)."""
