# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the discovery registry, for example V(http://127.0.0.1:7465).
      - Falls back to the E(DISCOVERY_URL) environment variable.
    type: str
    required: true
  provider_key_file:
    description:
      - The provider's ed25519 private key (unencrypted PKCS#8 PEM, mode 0600) every request is signed with.
      - The provider id is the lowercase hex of its raw public key. The key never appears in arguments or results.
      - Falls back to the E(DISCOVERY_PROVIDER_KEY_FILE) environment variable.
    type: path
    required: true
  timeout:
    description: Seconds to wait for each registry request.
    type: int
    default: 10
  rate_limit_wait:
    description:
      - Seconds in all a request refused with 429 (rate limited) is sent again after the registry's Retry-After.
      - 0 fails at the first 429.
    type: int
    default: 120
  retries:
    description:
      - Times a request the registry did not answer (timeout, refused connection) or answered with a server error
        (5xx) is sent again, after 1, 2, 4… seconds (at most 30). Every try is signed afresh.
      - 0 fails at the first such error. Refusals (4xx) are never retried.
    type: int
    default: 3
  validate_certs:
    description: Verify the registry's TLS certificate (HTTPS URLs).
    type: bool
    default: true
  ca_path:
    description: CA bundle to verify the registry's certificate with.
    type: path
requirements:
  - cryptography (ed25519 signatures)
"""
