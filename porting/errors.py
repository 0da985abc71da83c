"""Moved to ``vidport.errors`` (the shared base); kept while imports move."""

from vidport.errors import ConvertError, SourceError, UserError

__all__ = ["ConvertError", "SourceError", "UserError"]
