"""The string formats a Kubernetes API server checks, as patterns for pydantic fields.

Fields of the LLMSelection spec that end up in a Job (names, label values, quantities) carry
these patterns, so the CRD's schema, the operator and `lensllm select --local` refuse the same
values the API server would refuse when the operator creates the Job, before any trial runs.
Patterns are anchored with `^...$`; pydantic and the API server (RE2) both read `$` as the end of
the text, so a trailing newline never passes.
"""

# RFC 1123 label: a candidate name, which is part of Job names and label values.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# RFC 1123 subdomain: names of Secrets, claims, priority classes (at most 253 characters).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label value (at most 63 characters, may be empty).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A label or taint key: an optional DNS-subdomain prefix and a name of at most 63 characters.
QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
# An extended resource name: always domain-prefixed (vendor.com/thing).
EXTENDED_RESOURCE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# A non-negative resource quantity: 4, 3500m, 1.5, 32Gi, 1e9 (a negative one is refused too).
QUANTITY = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
# An environment variable name, as the API server accepts it.
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A Secret key.
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"

LABEL_LIMIT = 63
SUBDOMAIN_LIMIT = 253
QUANTITY_LIMIT = 64
