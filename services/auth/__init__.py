"""Who may do what: API keys (``api_keys``), their view and admin (``key_ring``,
``key_admin``), signed artifact URLs (``url_signing``) and the throttle on failed sign-ins
(``throttle``)."""
