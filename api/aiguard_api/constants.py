"""Names fixed by the design brief: API group, labels, annotations, ports, paths, env vars.

Everything that crosses a component boundary is spelled once, here.
"""

from __future__ import annotations

import hashlib
from typing import Final

API_GROUP: Final = "aiguard.dev"
API_VERSION: Final = "v1alpha1"
GROUP_VERSION: Final = f"{API_GROUP}/{API_VERSION}"

KIND_POLICY: Final = "AIPolicy"
PLURAL_POLICY: Final = "aipolicies"
SINGULAR_POLICY: Final = "aipolicy"
SHORT_POLICY: Final = "aip"
KIND_INCIDENT: Final = "AIIncident"
PLURAL_INCIDENT: Final = "aiincidents"
SINGULAR_INCIDENT: Final = "aiincident"
SHORT_INCIDENT: Final = "aii"

# Injection opt-in / opt-out.
LABEL_INJECT: Final = "aiguard.dev/inject"  # on a pod: "enabled" | "disabled"
LABEL_NS_INJECTION: Final = "aiguard.dev/injection"  # on a namespace: "enabled"
INJECT_ENABLED: Final = "enabled"
INJECT_DISABLED: Final = "disabled"
ANNOTATION_INJECT: Final = "aiguard.dev/inject"  # annotation form of the opt-out
ANNOTATION_POLICY: Final = "aiguard.dev/policy"  # choose the AIPolicy by name
ANNOTATION_STATUS: Final = "aiguard.dev/status"  # what injection added (JSON)

# Labels the operator puts on what it owns.
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "aiguard-operator"
LABEL_POLICY_NAME: Final = "aiguard.dev/policy"

# Sidecar ports and endpoints.
SIDECAR_PROXY_HOST: Final = "127.0.0.1"
SIDECAR_PROXY_PORT: Final = 15080
SIDECAR_ADMIN_PORT: Final = 15090
SIDECAR_CONTAINER_NAME: Final = "aiguard-sidecar"

# Environment injected into app containers so unmodified SDKs route through the sidecar.
PROXY_BASE: Final = f"http://{SIDECAR_PROXY_HOST}:{SIDECAR_PROXY_PORT}"
APP_ENV: Final[dict[str, str]] = {
    "OPENAI_BASE_URL": f"{PROXY_BASE}/openai/v1",
    "ANTHROPIC_BASE_URL": f"{PROXY_BASE}/anthropic",
    "AZURE_OPENAI_ENDPOINT": f"{PROXY_BASE}/azure",
}
# Placeholder keys: the SDKs refuse to start without one. The sidecar drops them.
PLACEHOLDER_KEY: Final = "aiguard-placeholder"
APP_PLACEHOLDER_ENV: Final[dict[str, str]] = {
    "OPENAI_API_KEY": PLACEHOLDER_KEY,
    "ANTHROPIC_API_KEY": PLACEHOLDER_KEY,
    "AZURE_OPENAI_API_KEY": PLACEHOLDER_KEY,
}

# Environment of the sidecar container, set by injection through the downward API.
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"
ENV_POD_UID: Final = "POD_UID"
ENV_SERVICE_ACCOUNT: Final = "SERVICE_ACCOUNT"
ENV_LOG_LEVEL: Final = "AIGUARD_LOG_LEVEL"

# Files inside the sidecar container.
SIDECAR_POLICY_DIR: Final = "/etc/aiguard/policy"
SIDECAR_POLICY_FILE: Final = "config.json"
SIDECAR_SECRETS_DIR: Final = "/var/run/aiguard/secrets"
SIDECAR_SPOOL_DIR: Final = "/var/lib/aiguard/spool"

# The compiled policy ConfigMap.
CONFIGMAP_PREFIX: Final = "aiguard-policy-"
CONFIGMAP_KEY: Final = SIDECAR_POLICY_FILE
COLLECTOR_CA_KEY: Final = "collector-ca.crt"
"""The collector's CA bundle, beside the policy in the same ConfigMap (when the operator
hands one out): mounted at ``SIDECAR_POLICY_DIR/collector-ca.crt``."""


def configmap_name(policy_name: str) -> str:
    """Name of the ConfigMap holding the compiled config of ``policy_name``."""
    return f"{CONFIGMAP_PREFIX}{policy_name}"


def secret_volume_name(secret_name: str) -> str:
    """Volume name for a provider Secret mounted into the sidecar.

    Unique per Secret name: when the name would exceed 63 characters it is shortened and
    suffixed with a hash of the full Secret name, so two long names never share a volume.
    """
    name = f"aiguard-secret-{secret_name}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(secret_name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def secret_file_path(secret_name: str, key: str, root: str = SIDECAR_SECRETS_DIR) -> str:
    """Where the sidecar reads ``key`` of Secret ``secret_name``."""
    return f"{root}/{secret_name}/{key}"
