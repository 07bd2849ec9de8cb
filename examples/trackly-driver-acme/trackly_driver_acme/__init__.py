"""Acme SMS: a worked example of a provider plugin that talks HTTP, with its fake and the contract suite.

Acme is made up; its whole API is written down in :mod:`trackly_driver_acme.fake`, which serves it. What a real
plugin does the same way:

- send through trackly-exec's :class:`~trackly_exec.drivers.http.HttpClient`, which maps every failure the way the
  executor's guarantees need it (nothing sent: transient; the request may have arrived: unknown outcome, never
  re-sent blindly) and :func:`~trackly_exec.drivers.http.raise_for_status` for the provider's HTTP statuses;
- carry our message id to the provider (here ``ref``) so that its answer and its delivery reports come back with it;
- answer each message on its own from the provider's per-message statuses, and an answer you cannot read as an
  unknown outcome for every message of the request;
- leave webhook authentication to the base class (the secret path token), parse the provider's reports and
  inbound messages, and refuse what does not parse with :class:`~trackly_exec.WebhookFormatError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import orjson
from pydantic import Field, SecretStr

from trackly_exec import (
    Accepted,
    DeliveryReport,
    Driver,
    DriverSettings,
    InboundMessage,
    OutboundMessage,
    Rejected,
    SendResult,
    UnknownOutcome,
    WebhookFormatError,
    WebhookRequest,
)
from trackly_exec.drivers.http import HttpClient, raise_for_status

#: Acme's delivery states: final ones say whether the handset got the message; the others are intermediate.
DELIVERED = {"delivered": True, "failed": False, "expired": False, "rejected": False, "spam": False}
INTERMEDIATE = frozenset({"queued", "sent"})
#: Acme's per-message error code for a recipient who replied STOP to Acme itself.
OPTED_OUT = "OPTED_OUT"


class AcmeSettings(DriverSettings):
    """``[drivers.acme]``: the API key of your Acme account."""

    #: the key goes in an ``Authorization`` header of our own: credentials in ``base_url`` are a config error
    authorization_header: ClassVar[bool] = True
    #: ``batch_size`` (list-overridable, as for every driver) stays within Acme's 500 by the field's bound below
    base_url: str = Field("https://api.acme-sms.example", description="Acme API base URL.")
    api_key: SecretStr = Field(SecretStr(""), description="API key, sent as a Bearer token.")
    batch_size: int = Field(100, ge=1, le=500, description="Messages per request (Acme takes up to 500).")


class AcmeDriver(Driver[AcmeSettings]):
    """``POST /v2/sms`` with up to 500 messages; per-message statuses in the answer; JSON webhooks."""

    settings_model: ClassVar[type[DriverSettings]] = AcmeSettings
    fake: ClassVar[str | None] = "trackly_driver_acme.fake:AcmeFake"

    _http: HttpClient | None = None

    async def startup(self) -> None:
        key = self.settings.api_key.get_secret_value()
        self._http = HttpClient(self.settings, headers={"Authorization": f"Bearer {key}"})
        await self._http.open()

    async def shutdown(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        assert self._http is not None, "startup() not called"
        callback = {"callback_url": self.context.status_url} if self.context.status_url else {}
        body = {
            "messages": [
                {
                    "ref": m.id,
                    "to": m.to,
                    "from": m.sender,
                    "text": m.body,
                    # the validity period: Acme drops what it could not deliver within it (quiet hours, staleness)
                    **({"ttl": m.valid_for} if m.valid_for is not None else {}),
                    **callback,
                }
                for m in messages
            ]
        }
        reply = await self._http.post("/v2/sms", json_body=body)  # raises Transient/UnknownOutcomeError itself
        answer = reply.json()
        error = answer.get("error") if isinstance(answer, dict) and isinstance(answer.get("error"), dict) else {}
        # 429 -> transient (Retry-After kept), 401 -> transient (the key refused: held, not dead-lettered), other
        # 4xx -> rejected, 5xx and 408 -> unknown outcome (the provider may have taken it)
        raise_for_status(reply, code=error.get("code"), detail=str(error.get("message") or ""))
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list):  # a 2xx we cannot read: it may have been taken
            return [
                UnknownOutcome(message_id=m.id, detail=f"Acme answered HTTP {reply.status} without results")
                for m in messages
            ]
        out: list[SendResult] = []
        for r in results:
            if not isinstance(r, dict) or not isinstance(r.get("ref"), str):
                continue  # Driver.submit answers every message left without a result as an unknown outcome
            if r.get("status") == "accepted" and r.get("id"):
                out.append(
                    Accepted(message_id=r["ref"], provider_message_id=str(r["id"]), segments=int(r.get("parts") or 1))
                )
            elif r.get("status") == "rejected":
                err = r.get("error") if isinstance(r.get("error"), dict) else {}
                code = str(err.get("code") or "REJECTED")
                out.append(
                    Rejected(
                        message_id=r["ref"],
                        code=code,
                        detail=str(err.get("message") or ""),
                        opted_out=code == OPTED_OUT,
                    )
                )
            else:
                out.append(UnknownOutcome(message_id=r["ref"], detail=f"unexpected status {r.get('status')!r}"))
        return out

    @staticmethod
    def _json(request: WebhookRequest) -> Any:
        try:
            return orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            raise WebhookFormatError("Acme webhook body is not JSON") from exc

    def parse_status(self, request: WebhookRequest) -> list[DeliveryReport]:
        """``{"reports": [{"ref", "id", "status", "error_code", "at"}]}``."""
        body = self._json(request)
        items = body.get("reports") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise WebhookFormatError("Acme status webhook without reports")
        out = []
        for item in items:
            status = item.get("status") if isinstance(item, dict) else None
            if status not in DELIVERED and status not in INTERMEDIATE:
                raise WebhookFormatError(f"Acme report with unknown status {status!r}")
            out.append(
                DeliveryReport(
                    message_id=item.get("ref") or None,
                    provider_message_id=item.get("id") or None,
                    status=status,
                    delivered=DELIVERED.get(status),
                    error_code=item.get("error_code") or None,
                    done_at=item.get("at") or None,
                    spam=status == "spam",
                    opted_out=item.get("error_code") == OPTED_OUT,
                )
            )
        return out

    def parse_inbound(self, request: WebhookRequest) -> list[InboundMessage]:
        """``{"from", "to", "text", "id"}``: a reply to one of our numbers (a STOP unsubscribes its sender)."""
        body = self._json(request)
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("from", "to", "text")):
            raise WebhookFormatError("Acme inbound webhook needs from, to and text")
        return [
            InboundMessage(
                from_number=body["from"], to_number=body["to"], text=body["text"], provider_message_id=body.get("id")
            )
        ]
