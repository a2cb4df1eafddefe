"""Which image URLs may reach vLLM, which fetches remote images itself (docs/router.md, "URL policy").

Default: `data:` URLs only, so vLLM never fetches anything on a tenant's behalf. A platform team
may opt in to `http`/`https` for an explicit list of host names (exact match, as vLLM's
`--allowed-media-domains` compares them). Never: `file:` or any other scheme, user info in the
URL, or a host that is (or resolves to) a private, loopback, link-local or otherwise non-public
address. vLLM runs with the same domain list and without redirects, so it refuses on its own too.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from .config import AdmissionPolicy
from .errors import AdmissionError

REMOTE_SCHEMES = frozenset({"http", "https"})


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def public_address(address: str) -> bool:
    """Whether an IP address is one vLLM may be sent to fetch from."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, param: str, policy: AdmissionPolicy) -> str | None:
    """Refuse a URL the policy does not allow; returns the host name a remote URL names (to be
    resolved and checked by `check_addresses`), None for a data URL."""
    scheme = scheme_of(url)
    if scheme not in policy.allowed_image_url_schemes or scheme not in REMOTE_SCHEMES | {"data"}:
        allowed = ", ".join(sorted(policy.allowed_image_url_schemes))
        raise AdmissionError(
            "image_url_scheme",
            f"{param}: URL scheme {scheme or '(none)'!r} is not allowed; allowed: {allowed}.", param=param,
        )
    if scheme == "data":
        return None
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise AdmissionError("image_url_not_allowed", f"{param}: the URL is malformed.", param=param) from None
    if "@" in parts.netloc or "\\" in url:
        # Parsers disagree on such URLs (user info, backslashes); the host we check must be vLLM's.
        raise AdmissionError("image_url_not_allowed", f"{param}: user info in image URLs is not allowed.", param=param)
    if host not in policy.allowed_image_url_domains:
        raise AdmissionError(
            "image_url_not_allowed",
            f"{param}: host {host[:100]!r} is not in the allowed image domains"
            + (f" ({', '.join(sorted(policy.allowed_image_url_domains))})." if policy.allowed_image_url_domains
               else " (none are configured)."),
            param=param,
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    if not public_address(host):
        raise AdmissionError(
            "image_url_not_allowed", f"{param}: {host} is not a public address.", param=param
        )
    return host


def check_addresses(host: str, addresses: list[str]) -> None:
    """Refuse a host that resolves to any non-public address (a rebinding name would otherwise
    let vLLM fetch from inside the cluster)."""
    bad = [a for a in addresses if not public_address(a)]
    if bad or not addresses:
        raise AdmissionError(
            "image_url_not_allowed",
            f"image host {host!r} resolves to a non-public address; refused." if bad
            else f"image host {host!r} does not resolve.",
        )
