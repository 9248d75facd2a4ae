"""Who is calling the collector: Kubernetes TokenReview and SubjectAccessReview.

Sidecars (``POST /v1/events``) present their pod's projected ServiceAccount token, issued for
the audience ``aiguard.dev/collector`` (:data:`aiguard_api.audit.COLLECTOR_AUDIENCE`): a token
the app container could read (its default ServiceAccount token, audience: the API server) is
refused. The API server's TokenReview says whose token it is; for a pod-bound token it also
names the pod (``authentication.kubernetes.io/pod-name``). A sidecar may only write events of
its own namespace, ServiceAccount and (when the token is pod-bound) pod.

Readers (``GET``) present any token the API server accepts (their own ServiceAccount's, or one
issued for the collector audience); a SubjectAccessReview then asks RBAC whether they may
``get`` the virtual subresource ``aipolicies/audit`` in the namespace they ask about
(cluster-wide when they ask about every namespace). Running a purge now needs ``delete`` on
it, cluster-wide. So evidence access is granted with ordinary Roles::

    rules:
    - apiGroups: [aiguard.dev]
      resources: [aipolicies/audit]
      verbs: [get]

Results are cached briefly (``ttl`` seconds, failures ``negative_ttl``) keyed by a hash of the
token, so a busy sidecar costs one TokenReview per ``ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from aiguard_api import constants
from aiguard_operator import kube

SA_PREFIX: Final = "system:serviceaccount:"
POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
SUBRESOURCE: Final = "audit"
MAX_CACHE: Final = 10_000


class AuthError(Exception):
    """Refused: ``status`` is 401 (who are you?) or 403 (not allowed); the message is safe to
    return to the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Unavailable(Exception):
    """The API server could not be asked (the caller answers 503: the sidecar retries)."""


@dataclass(frozen=True, slots=True)
class Identity:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: dict[str, list[str]]

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) for a ServiceAccount token."""
        if not self.username.startswith(SA_PREFIX):
            return None
        ns, _, name = self.username.removeprefix(SA_PREFIX).partition(":")
        return (ns, name) if ns and name else None

    @property
    def pod(self) -> str | None:
        values = self.extra.get(POD_NAME_EXTRA) or []
        return values[0] if values else None


class Authenticator:
    def __init__(
        self,
        api: kube.Client,
        *,
        audience: str,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
    ) -> None:
        self.api = api
        self.audience = audience
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, Identity | AuthError]] = (
            OrderedDict()
        )
        self._sar_cache: OrderedDict[tuple[str, ...], tuple[float, bool]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[Identity]] = {}

    # ── TokenReview ──────────────────────────────────────────────────────────────────────────

    async def identify(self, authorization: str | None, *, writer: bool) -> Identity:
        """The caller of a request with this ``Authorization`` header. ``writer``: only tokens
        for the collector audience count. Raises :class:`AuthError`, :class:`Unavailable`."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "a bearer token is required (Authorization: Bearer ...)")
        audiences = [self.audience] if writer else [self.audience, ""]
        last: AuthError | None = None
        for audience in audiences:
            try:
                return await self._review(token, audience)
            except AuthError as e:
                last = e
        assert last is not None
        raise last

    async def _review(self, token: str, audience: str) -> Identity:
        key = (hashlib.sha256(token.encode()).hexdigest(), audience)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            if isinstance(hit[1], AuthError):
                raise hit[1]
            return hit[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            identity = await self._token_review(token, audience)
        except AuthError as e:
            self._remember(key, e, self.negative_ttl)
            future.set_exception(e)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        except BaseException as e:
            future.set_exception(Unavailable(str(e)))
            future.exception()
            raise
        else:
            self._remember(key, identity, self.ttl)
            future.set_result(identity)
            return identity
        finally:
            del self._inflight[key]

    def _remember(self, key: tuple[str, str], value: Identity | AuthError, ttl: float) -> None:
        self._cache[key] = (time.monotonic() + ttl, value)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHE:
            self._cache.popitem(last=False)

    async def _token_review(self, token: str, audience: str) -> Identity:
        spec: dict[str, Any] = {"token": token}
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        try:
            review = await self.api.create("/apis/authentication.k8s.io/v1/tokenreviews", body)
        except (kube.KubeError, OSError, TimeoutError) as e:
            raise Unavailable(f"TokenReview failed: {e}") from e
        status = review.get("status") or {}
        if not status.get("authenticated"):
            raise AuthError(401, "the token was not accepted (invalid, expired or wrong audience)")
        user = status.get("user") or {}
        return Identity(
            username=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(user.get("groups") or ()),
            extra={k: list(v) for k, v in (user.get("extra") or {}).items()},
        )

    # ── SubjectAccessReview ──────────────────────────────────────────────────────────────────

    async def authorize(
        self,
        who: Identity,
        *,
        verb: str,
        namespace: str | None,
        subresource: str = SUBRESOURCE,
    ) -> None:
        """Raise :class:`AuthError` 403 unless ``who`` may ``verb`` ``aipolicies/<subresource>``
        (``audit``; ``capture`` for captured content) in ``namespace`` (None: cluster-wide)."""
        key = (who.username, who.uid, verb, namespace or "", subresource)
        now = time.monotonic()
        hit = self._sar_cache.get(key)
        if hit is not None and hit[0] > now:
            allowed = hit[1]
        else:
            allowed = await self._access_review(who, verb, namespace, subresource)
            self._sar_cache[key] = (now + (self.ttl if allowed else self.negative_ttl), allowed)
            while len(self._sar_cache) > MAX_CACHE:
                self._sar_cache.popitem(last=False)
        if not allowed:
            where = f"in namespace {namespace}" if namespace else "cluster-wide"
            raise AuthError(
                403,
                f"{who.username} may not {verb} {constants.PLURAL_POLICY}/{subresource} "
                f"({constants.API_GROUP}) {where}",
            )

    async def _access_review(
        self, who: Identity, verb: str, namespace: str | None, subresource: str = SUBRESOURCE
    ) -> bool:
        attrs: dict[str, Any] = {
            "group": constants.API_GROUP,
            "resource": constants.PLURAL_POLICY,
            "subresource": subresource,
            "verb": verb,
        }
        if namespace:
            attrs["namespace"] = namespace
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": who.username,
                "uid": who.uid,
                "groups": list(who.groups),
                "extra": who.extra,
                "resourceAttributes": attrs,
            },
        }
        try:
            review = await self.api.create(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews", body
            )
        except (kube.KubeError, OSError, TimeoutError) as e:
            raise Unavailable(f"SubjectAccessReview failed: {e}") from e
        return bool((review.get("status") or {}).get("allowed"))


def check_writer(who: Identity, namespace: str, service_account: str, pod: str) -> str | None:
    """Why ``who`` may not write an event of that workload (None: it may)."""
    sa = who.service_account
    if sa is None:
        return f"{who.username} is not a ServiceAccount; only sidecars write events"
    if sa != (namespace, service_account):
        return (
            f"the token is for ServiceAccount {sa[0]}/{sa[1]}; it may not write events of "
            f"{namespace}/{service_account}"
        )
    if who.pod is not None and who.pod != pod:
        return f"the token is bound to pod {sa[0]}/{who.pod}; it may not write for pod {pod}"
    return None
