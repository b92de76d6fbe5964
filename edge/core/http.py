"""What HTTP means to every part of edge: the safe methods, the headers that override one, the
redirects that last."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PERMANENT_REDIRECTS = frozenset({301, 308})  # a browser may cache these for good
# Headers some frameworks read to turn a POST into another method (or a GET into a write).
METHOD_OVERRIDE_HEADERS = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-method",
        "x-original-method",
        "x-forwarded-method",
    }
)
