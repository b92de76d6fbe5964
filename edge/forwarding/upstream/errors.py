"""What goes wrong on the way to a portal, as the proxy tells it apart (502, 504)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The portal gave no usable answer."""


class UpstreamConnectError(UpstreamError):
    """No connection to the portal."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """The portal did not answer, or stopped answering, in time."""


class UpstreamDisconnected(UpstreamError):
    """The portal closed the connection before its answer was complete."""


class UpstreamProtocolError(UpstreamError):
    """The portal's answer is not HTTP/1.x that a proxy can pass on."""
