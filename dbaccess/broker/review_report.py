"""An incident review (services/incident_review.py's IncidentReport) as Markdown or as one
self-contained HTML page with a timeline.

Everything in a report that people wrote (reasons, notes, SQL, even names from the
identity provider) is hostile text to a reviewer's browser or Markdown viewer: the HTML
template escapes by default (Jinja2's autoescape), and the Markdown one escapes what a
Markdown renderer would pass through as HTML, or read as a table's structure. The
timeline is drawn by matplotlib (Agg, SVG inline: no script, no external asset), one row
per session, its statements as dots, flagged ones in red.
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Any

import jinja2
import markupsafe

from dbaccess.text import printable
from dbaccess.wire import IncidentReport

FORMATS = ("json", "md", "html")
_ASCII_CONTROLS = re.compile("[\x00-\x1f\x7f]")

_MD = """\
# Incident review: {{ r.incident | md }}

- Window: {{ r.opened_at | when }} to {{ r.closed_at | when if r.closed_at else "(a review is open)" }}
{% if r.incident_source -%}
{% set i = r.incident_source -%}
- At {{ i.source | md }}: {{ i.id | md }} "{{ i.title | md }}", {{ i.status | md }}, opened {{ i.opened_at | when }}, {{ ("resolved " ~ (i.closed_at | when)) if i.closed_at else "not resolved" }}
{% elif r.incident_source_note -%}
- Incident source: {{ r.incident_source_note | md }}
{% endif -%}
- Sessions: {{ r.sessions | length }}, statements: {{ statements }}
- Report SHA-256: `{{ r.hash }}`
- Audit trail's hash chain: {{ "verifies" if r.audit_chain_ok else "BROKEN (see the flags)" }}
- Thresholds: bulk reads over {{ r.bulk_rows }} rows; revocation later than \
{{ r.revoke_within_seconds | int }} s after a session's end

## Flags

{% if r.flags -%}
| kind | session | seq | what |
|---|---|---|---|
{% for f in r.flags -%}
| {{ f.kind }} | {{ (f.session_id or "-")[:8] }} | {{ f.seq or "-" }} | {{ f.message | md }} |
{% endfor %}
{%- else -%}
None.
{% endif %}
## Sessions
{% for s in r.sessions %}
### {{ s.id }}{{ " (drill)" if s.drill else "" }}

- Who: {{ (s.email or s.subject) | md }} as {{ s.db_user | md }}, \
{{ s.role | md }} on {{ s.target | md }}{{ " through the gateway" if s.access == "gateway" else "" }}
- Reason: {{ (s.reason or "-") | md }}
- Opened {{ s.created_at | when }}, expires {{ s.expires_at | when }}, \
ended {{ s.ended_at | when if s.ended_at else "-" }}, revoked \
{{ s.revoked_at | when if s.revoked_at else "not yet" }}{{ (" (" ~ s.revoke_cause ~ ")") if s.revoke_cause else "" }}
- Approvals: {% for a in s.approvals %}{{ a.by | md }} {{ a.at }}{{ ", " if not loop.last }}{% else %}none (break-glass){% endfor %}
- Review: {{ s.review_state or "-" }}{% if s.reviewed_by %} by {{ s.reviewed_by | md }} {{ s.reviewed_at | when }}: {{ (s.review_note or "") | md }}{% endif %}{% if s.review_report_sha256 %} (closed on the report with SHA-256 `{{ s.review_report_sha256 }}`){% endif %}
{% if s.statements_recorded -%}
{% if s.statements_from == "gateway" -%}
- Statement chain: {{ "verifies" if s.chain_ok else "BROKEN: " ~ (s.chain_problem or "") | md }}
{% else -%}
- Statements: {{ (s.statements_note or "from the database's log") | md }}
{% endif %}

| seq | started | classes | rows | status | SQL |
|---|---|---|---|---|---|
{% for st in s.statements -%}
| {{ st.seq }} | {{ st.started | when }} | {{ st.classes | join(", ") }} | \
{{ st.rows if st.rows is not none else "-" }} | {{ st.status }} | {{ st.sql | md }} |
{% endfor %}
{%- else -%}
- Statements: {{ (s.statements_note or "not recorded by a gateway (direct access: the database's own log)") | md }}
{% endif %}
{%- endfor %}
"""

_HTML = """\
<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>Incident review: {{ r.incident }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222 }
table { border-collapse: collapse; margin: 1em 0 }
td, th { border: 1px solid #ccc; padding: 2px 6px; vertical-align: top; text-align: left }
td.sql { font-family: monospace; white-space: pre-wrap; max-width: 60em }
tr.flagged td { background: #fde8e8 }
.bad { color: #b00; font-weight: bold }
.timeline svg { max-width: 100%; height: auto }
</style></head><body>
<h1>Incident review: {{ r.incident }}</h1>
<p>Window: {{ r.opened_at | when }} to {{ r.closed_at | when if r.closed_at else "(a review is open)" }};
{{ r.sessions | length }} session(s), {{ statements }} statement(s).<br>
{% if r.incident_source %}{% set i = r.incident_source %}At {{ i.source }}: {% if i.url %}<a href="{{ i.url }}">{{ i.id }}</a>{% else %}{{ i.id }}{% endif %} &ldquo;{{ i.title }}&rdquo;, {{ i.status }}, opened {{ i.opened_at | when }}, {{ ("resolved " ~ (i.closed_at | when)) if i.closed_at else "not resolved" }}<br>
{% elif r.incident_source_note %}Incident source: {{ r.incident_source_note }}<br>{% endif %}
Report SHA-256: <code>{{ r.hash }}</code><br>
Audit trail's hash chain: {% if r.audit_chain_ok %}verifies{% else %}<span class="bad">BROKEN (see the flags)</span>{% endif %}</p>
<div class="timeline">{{ timeline | safe }}</div>
<h2>Flags</h2>
{% if r.flags %}<table><tr><th>kind</th><th>session</th><th>seq</th><th>what</th></tr>
{% for f in r.flags %}<tr><td class="bad">{{ f.kind }}</td><td>{{ (f.session_id or "-")[:8] }}</td>
<td>{{ f.seq or "-" }}</td><td>{{ f.message }}</td></tr>
{% endfor %}</table>{% else %}<p>None.</p>{% endif %}
<h2>Sessions</h2>
{% for s in r.sessions %}
<h3>{{ s.id }}{{ " (drill)" if s.drill else "" }}</h3>
<ul>
<li>Who: {{ s.email or s.subject }} as {{ s.db_user }}, {{ s.role }} on {{ s.target }}{{ " through the gateway" if s.access == "gateway" else "" }}</li>
<li>Reason: {{ s.reason or "-" }}</li>
<li>Opened {{ s.created_at | when }}, expires {{ s.expires_at | when }},
ended {{ s.ended_at | when if s.ended_at else "-" }},
revoked {{ s.revoked_at | when if s.revoked_at else "not yet" }}{{ (" (" ~ s.revoke_cause ~ ")") if s.revoke_cause else "" }}</li>
<li>Approvals: {% for a in s.approvals %}{{ a.by }} {{ a.at }}{{ ", " if not loop.last }}{% else %}none (break-glass){% endfor %}</li>
<li>Review: {{ s.review_state or "-" }}{% if s.reviewed_by %} by {{ s.reviewed_by }} {{ s.reviewed_at | when }}: {{ s.review_note or "" }}{% endif %}{% if s.review_report_sha256 %} (closed on the report with SHA-256 <code>{{ s.review_report_sha256 }}</code>){% endif %}</li>
{% if s.statements_recorded %}
{% if s.statements_from == "gateway" %}<li>Statement chain: {% if s.chain_ok %}verifies{% else %}<span class="bad">BROKEN: {{ s.chain_problem or "" }}</span>{% endif %}</li>
{% else %}<li>Statements: {{ s.statements_note or "from the database's log" }}</li>{% endif %}
</ul>
<table><tr><th>seq</th><th>started</th><th>classes</th><th>rows</th><th>status</th><th>SQL</th></tr>
{% for st in s.statements %}<tr{{ ' class="flagged"' | safe if (s.id, st.seq) in flagged }}><td>{{ st.seq }}</td><td>{{ st.started | when }}</td>
<td>{{ st.classes | join(", ") }}</td><td>{{ st.rows if st.rows is not none else "-" }}</td>
<td>{{ st.status }}</td><td class="sql">{{ st.sql }}</td></tr>
{% endfor %}</table>
{% else %}
<li>Statements: {{ s.statements_note or "not recorded by a gateway (direct access: the database's own log)" }}</li>
</ul>
{% endif %}
{% endfor %}
</body></html>
"""


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _shown(value: object) -> object:
    """Every value a template shows, as text.printable shows it (ESC sequences and
    direction overrides written out, not obeyed: a reviewer's terminal or browser must
    show the SQL that ran, not what it makes itself look like), line breaks kept."""
    if not isinstance(value, str) or isinstance(value, markupsafe.Markup):
        return value
    if value.isascii() and not _ASCII_CONTROLS.search(value.replace("\n", " ")):
        return value  # the common case, without a look at each character's category
    return "\n".join(printable(line) for line in value.split("\n"))


def _md(value: object) -> str:
    """Text safe in a Markdown table cell: no raw HTML, no column breaks, one line."""
    text = str(_shown(str(value)))
    for raw, safe in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(raw, safe)
    for raw in ("\\", "|", "`", "*", "_", "[", "]"):
        text = text.replace(raw, "\\" + raw)
    return " ".join(text.split())


_md_env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined, finalize=_shown)
_md_env.filters.update(md=_md, when=_when)
_html_env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, finalize=_shown)
_html_env.filters.update(when=_when)
_MD_TEMPLATE = _md_env.from_string(_MD)
_HTML_TEMPLATE = _html_env.from_string(_HTML)


def _context(report: IncidentReport) -> dict[str, Any]:
    return {
        "r": report,
        "statements": sum(len(s.statements) for s in report.sessions),
        "flagged": {(f.session_id, f.seq) for f in report.flags if f.seq is not None},
    }


def render_markdown(report: IncidentReport) -> str:
    return _MD_TEMPLATE.render(_context(report))


def render_html(report: IncidentReport) -> str:
    return _HTML_TEMPLATE.render(_context(report), timeline=timeline_svg(report))


def timeline_svg(report: IncidentReport) -> str:
    """The incident at a glance: a row per session (opened to ended, the revocation as a
    bar), statements as dots (red when flagged), the incident's window shaded."""
    svg = timeline(report, "svg").decode()
    return svg[svg.index("<svg") :]  # inline: no XML declaration or doctype


def timeline(report: IncidentReport, fmt: str) -> bytes:
    """The timeline picture as ``fmt`` (svg for the page; png for the docs' picture)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates
    from matplotlib.figure import Figure

    mdates: Any = dates  # untyped functions (date2num, DateFormatter)

    sessions = report.sessions
    flagged = {(f.session_id, f.seq) for f in report.flags if f.seq is not None}
    figure = Figure(figsize=(11, 1.2 + 0.45 * len(sessions)), layout="constrained")
    ax = figure.subplots()
    now = report.generated_at
    window_end = report.closed_at or now
    ax.axvspan(
        mdates.date2num(report.opened_at),
        mdates.date2num(window_end),
        color="#e8f0fe",
        label="incident window",
    )
    labels = []
    for row, s in enumerate(sessions):
        start = mdates.date2num(s.created_at)
        end = mdates.date2num(s.ended_at or min(s.expires_at, now))
        ax.barh(row, end - start, left=start, height=0.5, color="#7aa7e0")
        if s.ended_at is not None:
            gone = mdates.date2num(s.revoked_at or now)
            ax.barh(row, gone - end, left=end, height=0.5, color="#f2b36b")
        plain = [
            mdates.date2num(st.started) for st in s.statements if (s.id, st.seq) not in flagged
        ]
        marked = [mdates.date2num(st.started) for st in s.statements if (s.id, st.seq) in flagged]
        if plain:
            ax.scatter(plain, [row] * len(plain), s=6, color="#1f3b73", zorder=3)
        if marked:
            ax.scatter(marked, [row] * len(marked), s=30, color="#c00", zorder=4)
        # "$" starts mathtext in matplotlib: a name is shown as it is
        labels.append(f"{s.email or s.subject} on {s.target}".replace("$", r"\$"))
    ax.set_yticks(range(len(sessions)), labels=labels)
    ax.set_ylim(-0.75, len(sessions) - 0.25)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=report.opened_at.tzinfo))
    ax.set_xlabel("UTC (blue: session; orange: end to revocation; red dots: flagged)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()


def render(report: IncidentReport, fmt: str) -> str:
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    raise ValueError(fmt)
