"""Running fedcot across machines: ``fedcot serve`` (an OpenAI-compatible HTTP server over
the in-process backends, :mod:`fedcot.federation.serve`)."""
