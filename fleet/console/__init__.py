"""Server-rendered web console (Jinja templates, one CSS file, inline SVG charts; no JS build, no CDN)."""
