"""The support staff's web page under ``/ui`` of ``sendwarden api``: server-rendered
HTML (Jinja2 templates and one stylesheet, all package data, no script, no CDN)."""
