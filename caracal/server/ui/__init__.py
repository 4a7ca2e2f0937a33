"""The dashboard at ``/ui``: server-rendered pages (Jinja2), one CSS file, a little vanilla JavaScript that
polls for changes, and charts drawn as inline SVG on the server. Every asset ships in this package
(``templates/``, ``static/``): no CDN, no build step, works offline.

- :mod:`~caracal.server.ui.session`: sign-in with an API key, signed session cookies, CSRF tokens;
- :mod:`~caracal.server.ui.figures`: what the pages show, from the objects the REST API answers from;
- :mod:`~caracal.server.ui.charts`: stacked bars as SVG;
- :mod:`~caracal.server.ui.routes`: the pages.
"""
