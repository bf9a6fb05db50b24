"""What the Compute Engine users in arbiter share: the credentials and the endpoint.

Used by the market-data source (``providers/gcp.py``) and the cloud executor
(``arbiter/executors/cloud_gcp.py``). Each translates google-auth's and
google-api-core's errors into its own part of the exception tree.
"""

from __future__ import annotations

import google.auth
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials


def compute_credentials(*, anonymous: bool, scope: str) -> Credentials:
    """No credentials at all when ``anonymous`` (only for a local fake), else the
    application default credentials for ``scope``. Raises google-auth's errors
    (``DefaultCredentialsError``…) for the caller to translate."""
    if anonymous:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    credentials, _project = google.auth.default(scopes=[scope])
    return credentials


def compute_client_options(endpoint: str | None) -> ClientOptions | None:
    """Client options pointing a client at ``endpoint``; None (Google's own) without one."""
    if not endpoint:
        return None
    return ClientOptions(api_endpoint=endpoint)
