"""The operator's side of a running gateway: the /admin page and the admin API.

`auth` checks the admin token (constant-time), signs the page's cookie and its CSRF tokens;
`actions` stops instances and ends sessions for the page, the API and the CLI alike; `views`
renders the page with inline SVG charts; `routes` wires them to HTTP.
"""
