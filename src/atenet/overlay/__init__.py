"""The sealed overlay format between tok, nodes and peers: keys and seal/open (``seal``), replay
windows (``replay``), fragments of large sealed packets (``fragment``) and access tokens
(``token``)."""
