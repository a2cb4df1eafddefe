"""Who may pin a request's track with the override header (x-pixtral-track).

The header bypasses the canary weight and stickiness, so it is a tool for the people who test a
rollout, not for every tenant: only tenants marked `trackOverride: true` in the tenancy config
may send it. Anyone else gets 403 naming the header rather than a silently ignored header, so a
tester who lacks the permission learns it at once instead of reading stable's answers as the
canary's.
"""

from __future__ import annotations

from collections.abc import Collection

from .choice import parse_override
from .errors import PermissionDenied


def permitted_override(value: bytes | None, header: str, tenant: str, allowed: Collection[str]) -> str | None:
    """The pinned track (None without the header); PermissionDenied for a tenant not allowed,
    InvalidRequest for a value other than stable/canary."""
    if value is None:
        return None
    if tenant not in allowed:
        raise PermissionDenied(
            f"Tenant {tenant!r} may not pin a track with the {header} header; remove the header, or mark the "
            "tenant with trackOverride: true in spec.router.tenants.",
            param=header, code="track_override_not_allowed",
        )
    return parse_override(value, header)
