"""One exception root, split so that retries only ever touch the transient family.

``TracklyError``
  ``ConfigError``           bad configuration (the CLI exits 2)
  ``DriverError``           anything a provider driver raises
    ``PermanentSendError``  the provider refused; sending again will not help
    ``TransientSendError``  nothing was accepted; safe to retry (``retry_after`` seconds, if known)
    ``UnknownOutcomeError`` the request may have reached the provider: never re-send blindly
  ``WebhookError``          a webhook request we refuse
    ``WebhookAuthError``    failed authentication (HTTP 403)
    ``WebhookFormatError``  malformed body (HTTP 400)
  ``StoreError``            the store could not be started or reached
"""

from __future__ import annotations


class TracklyError(Exception):
    """Root of every error trackly-exec raises on purpose."""


class ConfigError(TracklyError):
    """The configuration file or environment is invalid."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        problems: list[tuple[str, str]] | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.problems = problems or ([(key or "", message)])
        if len(self.problems) > 1:  # every problem at once, one per line
            lines = "".join(f"\n  {k}: {m}" if k else f"\n  {m}" for k, m in self.problems)
            super().__init__(f"{file + ': ' if file else ''}{len(self.problems)} problems:{lines}")
            return
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class DriverError(TracklyError):
    """Raised by a provider driver. ``code`` and ``detail`` come from the provider when known."""

    def __init__(self, detail: str = "", *, code: str | None = None) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"[{code}] {detail}" if code else detail)


class PermanentSendError(DriverError):
    """The provider rejected the request; retrying cannot succeed."""


class TransientSendError(DriverError):
    """The provider did not accept the request and it is safe to try again."""

    def __init__(self, detail: str = "", *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class UnknownOutcomeError(DriverError):
    """The request may have been accepted (timeout or reset after it was written)."""


class DriverNotFound(TracklyError):
    """A configuration names a driver that no installed distribution provides."""


class WebhookError(TracklyError):
    """A webhook request that is refused."""

    status = 400


class WebhookAuthError(WebhookError):
    """Authentication of a webhook request failed."""

    status = 403


class WebhookFormatError(WebhookError):
    """A webhook body could not be parsed."""

    status = 400


class StoreError(TracklyError):
    """The MongoDB store could not be started or reached."""
