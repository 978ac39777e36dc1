"""The four analytics questions in SQL, for DuckDB and chDB (in-process
ClickHouse), with Megalith's counting rules (docs/analytics.md, "The
counting rules"; the brute force is src/reference/analytics.rs).

Loading (timed apart from the questions) reads the JSONL once into two
tables: `ev` (one row per event id: id, pubkey, created_at, kind, content,
the first `d` tag's value and the first numeric `expiration`) and `tag` (one
row per `e`, `a`, `E`, `A` and `t` tag of at least two elements, with its
position and 4th element). Only tags the rules read are kept, which makes
the engines' questions cheaper, not dearer.

Everything else is computed per question, from those two tables, as a
store would have it:

* dead events: older versions of a replaceable or addressable event
  (newest created_at wins, ties to the lowest id), events deleted by their
  author's kind 5 (`e` ids of events other than kind 5; `a` addresses in
  their one canonical spelling, versions with created_at <= the deletion's),
  expired events (NIP-40) and ephemeral kinds;
* versions: every id a video ever had -> its key (`kind:pubkey:d` for 34235
  and 34236, the id for 21 and 22);
* reactions (7): target = the last `a` if it parses as a video address,
  else the last `e` resolved through the versions; reposts (6: last `e`;
  16: last `a` over last `e`); one per (person, target, reaction|repost),
  the newest (created_at, ties to the lowest id); content `-` = downvote;
* comments (1111): first `A` as a video address, else first `E` resolved;
  legacy comments (1): the `e` marked root, else the first `e`, resolved;
* only live videos have figures; engagement = reactions + 2 comments +
  3 reposts; trending = engagement * exp(-age_hours/24) over videos of the
  last 7 days, by score then key (an address before an id; addresses by
  kind, pubkey, d; ids by id).
"""

import json
import os
import time

VIDEO_ADDRESS_RE = r"^\+?0*3423[56]:[0-9a-f]{64}:"
KEPT_TAGS = "('e', 'a', 'E', 'A', 't')"


def _dq(text):
    return "'" + text.replace("'", "''") + "'"


# ---------------------------------------------------------------------------
# DuckDB
# ---------------------------------------------------------------------------

DUCK_LOAD = """
CREATE TEMP TABLE raw AS
SELECT DISTINCT ON (id) id, pubkey, created_at, kind, tags, content
FROM read_json({path}, format = 'newline_delimited',
    columns = {{'id': 'VARCHAR', 'pubkey': 'VARCHAR', 'created_at': 'BIGINT',
               'kind': 'INTEGER', 'tags': 'VARCHAR[][]', 'content': 'VARCHAR',
               'sig': 'VARCHAR'}},
    maximum_object_size = 4194304);
CREATE TABLE ev AS
SELECT id, pubkey, created_at, kind, content,
    coalesce(list_filter(tags, lambda t: len(t) >= 2 AND t[1] = 'd')[1][2], '') AS d_tag,
    TRY_CAST(list_filter(tags, lambda t: len(t) >= 2 AND t[1] = 'expiration'
        AND regexp_full_match(t[2], '[0-9]+'))[1][2] AS UBIGINT) AS expiration
FROM raw ORDER BY kind, created_at;
CREATE TABLE tag AS
SELECT id, pubkey, kind, created_at, pos, t[1] AS name, t[2] AS value,
    coalesce(t[4], '') AS marker
FROM (SELECT id, pubkey, kind, created_at, unnest(tags) AS t,
             generate_subscripts(tags, 1) AS pos FROM raw)
WHERE len(t) >= 2 AND t[1] IN {kept}
ORDER BY name, kind, value;
DROP TABLE raw;
"""

# The live set, versions and figures; {now} and {act_filter} are filled in.
DUCK_CTE = """
WITH
addressed AS (
    SELECT id, pubkey, created_at,
        CAST(kind AS VARCHAR) || ':' || pubkey || ':'
            || (CASE WHEN kind >= 30000 THEN d_tag ELSE '' END) AS addr
    FROM ev
    WHERE kind IN (0, 3) OR kind BETWEEN 10000 AND 19999 OR kind BETWEEN 30000 AND 39999),
del_e AS (SELECT DISTINCT pubkey, value AS target_id FROM tag WHERE kind = 5 AND name = 'e'),
del_a AS (SELECT pubkey, value AS addr, max(created_at) AS until
          FROM tag WHERE kind = 5 AND name = 'a' GROUP BY pubkey, value),
dead AS (
    SELECT id FROM (SELECT id, row_number() OVER (
        PARTITION BY addr ORDER BY created_at DESC, id) AS rn FROM addressed) WHERE rn > 1
    UNION ALL
    SELECT a.id FROM addressed a JOIN del_a d ON d.addr = a.addr AND d.pubkey = a.pubkey
    WHERE d.until >= a.created_at
    UNION ALL
    SELECT e.id FROM ev e JOIN del_e d ON d.target_id = e.id AND d.pubkey = e.pubkey WHERE e.kind <> 5
    UNION ALL
    SELECT id FROM ev WHERE expiration <= {now} OR kind BETWEEN 20000 AND 29999),
live AS (SELECT ev.* FROM ev ANTI JOIN dead USING (id)),
versions AS (
    SELECT id, CASE WHEN kind >= 34235
        THEN CAST(kind AS VARCHAR) || ':' || pubkey || ':' || d_tag ELSE id END AS vkey
    FROM ev WHERE kind IN (21, 22, 34235, 34236)),
videos AS (
    SELECT CASE WHEN kind >= 34235
        THEN CAST(kind AS VARCHAR) || ':' || pubkey || ':' || d_tag ELSE id END AS vkey,
        id, pubkey, kind, created_at, d_tag
    FROM live WHERE kind IN (21, 22, 34235, 34236)),
livetag AS (
    SELECT t.* FROM tag t ANTI JOIN dead USING (id)
    WHERE t.kind IN (1, 6, 7, 16, 1111) {act_filter}),
per_event AS (
    SELECT id, pubkey, kind, created_at,
        arg_max(value, pos) FILTER (WHERE name = 'a' AND kind IN (7, 16)) AS last_a,
        arg_max(value, pos) FILTER (WHERE name = 'e' AND kind IN (6, 7, 16)) AS last_e,
        arg_min(value, pos) FILTER (WHERE name = 'A' AND kind = 1111) AS first_big_a,
        arg_min(value, pos) FILTER (WHERE name = 'E' AND kind = 1111) AS first_big_e,
        arg_min(value, pos) FILTER (WHERE name = 'e' AND kind = 1 AND marker = 'root') AS root_e,
        arg_min(value, pos) FILTER (WHERE name = 'e' AND kind = 1) AS first_e
    FROM livetag WHERE name IN ('a', 'e', 'A', 'E') GROUP BY id, pubkey, kind, created_at),
named AS (
    SELECT id, pubkey, kind, created_at,
        CASE WHEN kind = 1111 THEN first_big_a ELSE last_a END AS address,
        CASE WHEN kind = 1111 THEN first_big_e WHEN kind = 1 THEN coalesce(root_e, first_e)
             ELSE last_e END AS version_id
    FROM per_event),
resolved AS (
    SELECT n.id, n.pubkey, n.kind, n.created_at,
        coalesce(CASE WHEN regexp_matches(n.address, '{addr_re}')
                      THEN regexp_replace(n.address, '^\\+?0*', '') END, v.vkey) AS target
    FROM named n LEFT JOIN versions v ON v.id = n.version_id),
counted AS (
    SELECT r.target, r.kind, c.content, row_number() OVER (
        PARTITION BY r.pubkey, r.target,
            CASE WHEN r.kind = 7 THEN 0 WHEN r.kind IN (6, 16) THEN 1 ELSE 2 END
        ORDER BY r.created_at DESC, r.id) AS rn
    FROM resolved r LEFT JOIN (SELECT id, content FROM ev WHERE kind = 7) c ON c.id = r.id
    WHERE r.target IS NOT NULL),
figures AS (
    SELECT target AS vkey,
        count(*) FILTER (WHERE kind = 7 AND rn = 1 AND content <> '-') AS reactions,
        count(*) FILTER (WHERE kind = 7 AND rn = 1 AND content = '-') AS downvotes,
        count(*) FILTER (WHERE kind = 1111) AS comments,
        count(*) FILTER (WHERE kind = 1) AS legacy,
        count(*) FILTER (WHERE kind IN (6, 16) AND rn = 1) AS reposts
    FROM counted GROUP BY target),
stats AS (
    SELECT v.vkey, v.id, v.pubkey, v.kind, v.created_at, v.d_tag,
        coalesce(f.reactions, 0)::BIGINT AS reactions,
        coalesce(f.downvotes, 0)::BIGINT AS downvotes,
        coalesce(f.comments, 0)::BIGINT AS comments,
        coalesce(f.legacy, 0)::BIGINT AS legacy,
        coalesce(f.reposts, 0)::BIGINT AS reposts
    FROM videos v LEFT JOIN figures f ON f.vkey = v.vkey)
"""

FIGURE_COLUMNS = "vkey, reactions, downvotes, comments, legacy, reposts"

DUCK_STATS_ONE = """
{cte}
SELECT {cols} FROM stats WHERE vkey = (SELECT vkey FROM versions WHERE id = {id})
"""

DUCK_ALL_FIGURES = "{cte} SELECT " + FIGURE_COLUMNS + " FROM stats"

DUCK_TRENDING = """
{cte}
SELECT vkey, (reactions + 2 * comments + 3 * reposts)
    * exp(-(greatest({now} - created_at, 0) / 3600.0) / 24.0) AS score
FROM stats WHERE {now} - created_at <= 604800
ORDER BY score DESC, kind IN (21, 22),
    CASE WHEN kind IN (21, 22) THEN 0 ELSE kind END,
    CASE WHEN kind IN (21, 22) THEN id ELSE pubkey END,
    CASE WHEN kind IN (21, 22) THEN '' ELSE d_tag END
LIMIT 50
"""

DUCK_HASHTAGS = """
{cte}
SELECT lower(t.value) AS hashtag, count(DISTINCT v.vkey) AS videos,
    count(DISTINCT v.pubkey) AS creators, max(v.created_at) AS last_used
FROM videos v JOIN tag t ON t.id = v.id
WHERE t.name = 't' AND t.value <> ''
GROUP BY 1 ORDER BY videos DESC, hashtag LIMIT 20
"""

DUCK_ACTIVE = """
{cte}
SELECT created_at // 86400 AS day, count(DISTINCT pubkey) AS active
FROM live WHERE created_at // 86400 BETWEEN {first_day} AND {today}
GROUP BY 1 ORDER BY 1
"""


def act_filter_duck(candidates_sql):
    return f"AND t.id IN ({candidates_sql})"


class DuckDB:
    name = "DuckDB"

    def __init__(self, threads=None):
        import duckdb

        self.version = duckdb.__version__
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")

    def load(self, path):
        self.con.execute("SET preserve_insertion_order = false")
        self.con.execute(DUCK_LOAD.format(path=_dq(os.path.abspath(path)), kept=KEPT_TAGS))
        return self.con.execute("SELECT count(*) FROM ev").fetchone()[0]

    def _cte(self, now, act_filter=""):
        return DUCK_CTE.format(now=int(now), act_filter=act_filter, addr_re=VIDEO_ADDRESS_RE)

    def _rows(self, sql):
        return self.con.execute(sql).fetchall()

    def video_stats(self, event_id, now):
        # Only acts that can name this video: a tag naming its address
        # (in any spelling VideoKey::parse_address accepts) or one of its
        # versions' ids. The rules then run on those alone.
        key_of = f"(SELECT vkey FROM versions WHERE id = {_dq(event_id)})"
        candidates = (
            "SELECT id FROM tag WHERE name IN ('e', 'E') AND value IN "
            f"(SELECT id FROM versions WHERE vkey = {key_of}) "
            "UNION ALL SELECT id FROM tag WHERE name IN ('a', 'A') AND "
            f"regexp_replace(value, '^\\+?0*', '') = {key_of}")
        sql = DUCK_STATS_ONE.format(
            cte=self._cte(now, act_filter_duck(candidates)), cols=FIGURE_COLUMNS,
            id=_dq(event_id))
        rows = self._rows(sql)
        return figures_row(rows[0]) if rows else None

    def all_figures(self, now):
        return {r[0]: figures_row(r) for r in self._rows(
            DUCK_ALL_FIGURES.format(cte=self._cte(now)))}

    def trending(self, now):
        return [(k, float(s)) for k, s in self._rows(
            DUCK_TRENDING.format(cte=self._cte(now), now=int(now)))]

    def hashtags(self, now):
        return [(t, int(n), int(c), int(last)) for t, n, c, last in self._rows(
            DUCK_HASHTAGS.format(cte=self._cte(now)))]

    def active(self, now, days=30):
        today = int(now) // 86400
        rows = dict(self._rows(DUCK_ACTIVE.format(
            cte=self._cte(now), first_day=today - days + 1, today=today)))
        return [int(rows.get(d, 0)) for d in range(today - days + 1, today + 1)]

    def close(self):
        self.con.close()


# ---------------------------------------------------------------------------
# chDB (ClickHouse)
# ---------------------------------------------------------------------------

CH_SETTINGS = " SETTINGS join_use_nulls = 1"

CH_LOAD = [
    """CREATE TABLE raw (id String, pubkey String, created_at Int64, kind UInt32,
        tags Array(Array(String)), content String)
        ENGINE = MergeTree ORDER BY id""",
    """INSERT INTO raw SELECT id, pubkey, created_at, kind, tags, content
        FROM file({path}, 'JSONEachRow',
            'id String, pubkey String, created_at Int64, kind UInt32,
             tags Array(Array(String)), content String, sig String')""",
    """CREATE TABLE ev (id String, pubkey String, created_at Int64, kind UInt32,
        content String, d_tag String, expiration Nullable(UInt64))
        ENGINE = MergeTree ORDER BY (kind, created_at)""",
    """INSERT INTO ev SELECT id, pubkey, created_at, kind, content,
        arrayFirst(t -> length(t) >= 2 AND t[1] = 'd', tags)[2] AS d_tag,
        toUInt64OrNull(arrayFirst(t -> length(t) >= 2 AND t[1] = 'expiration'
            AND match(t[2], '^[0-9]+$'), tags)[2]) AS expiration
        FROM raw LIMIT 1 BY id""",
    """CREATE TABLE tag (id String, pubkey String, kind UInt32, created_at Int64,
        pos UInt32, name String, value String, marker String)
        ENGINE = MergeTree ORDER BY (name, kind, value)""",
    """INSERT INTO tag SELECT id, pubkey, kind, created_at, pos, t[1], t[2], t[4]
        FROM (SELECT * FROM raw LIMIT 1 BY id)
        ARRAY JOIN tags AS t, arrayEnumerate(tags) AS pos
        WHERE length(t) >= 2 AND t[1] IN """ + KEPT_TAGS,
    "DROP TABLE raw",
    "OPTIMIZE TABLE ev FINAL",
    "OPTIMIZE TABLE tag FINAL",
]

CH_CTE = """
WITH
addressed AS (
    SELECT id, pubkey, created_at,
        concat(toString(kind), ':', pubkey, ':', if(kind >= 30000, d_tag, '')) AS addr
    FROM ev
    WHERE kind IN (0, 3) OR kind BETWEEN 10000 AND 19999 OR kind BETWEEN 30000 AND 39999),
del_e AS (SELECT DISTINCT pubkey, value AS target_id FROM tag WHERE kind = 5 AND name = 'e'),
del_a AS (SELECT pubkey, value AS addr, max(created_at) AS until
          FROM tag WHERE kind = 5 AND name = 'a' GROUP BY pubkey, value),
dead AS (
    SELECT id FROM (SELECT id, row_number() OVER (
        PARTITION BY addr ORDER BY created_at DESC, id ASC) AS rn FROM addressed) WHERE rn > 1
    UNION ALL
    SELECT a.id FROM addressed a INNER JOIN del_a d ON d.addr = a.addr AND d.pubkey = a.pubkey
    WHERE d.until >= a.created_at
    UNION ALL
    SELECT e.id FROM ev e INNER JOIN del_e d ON d.target_id = e.id AND d.pubkey = e.pubkey
    WHERE e.kind <> 5
    UNION ALL
    SELECT id FROM ev WHERE expiration <= {now} OR kind BETWEEN 20000 AND 29999),
live AS (SELECT * FROM ev WHERE id NOT IN (SELECT id FROM dead)),
versions AS (
    SELECT id, if(kind >= 34235, concat(toString(kind), ':', pubkey, ':', d_tag), id) AS vkey
    FROM ev WHERE kind IN (21, 22, 34235, 34236)),
videos AS (
    SELECT if(kind >= 34235, concat(toString(kind), ':', pubkey, ':', d_tag), id) AS vkey,
        id, pubkey, kind, created_at, d_tag
    FROM live WHERE kind IN (21, 22, 34235, 34236)),
livetag AS (
    SELECT * FROM tag
    WHERE kind IN (1, 6, 7, 16, 1111) AND id NOT IN (SELECT id FROM dead) {act_filter}),
per_event AS (
    SELECT id, pubkey, kind, created_at,
        argMaxIf(toNullable(value), pos, name = 'a' AND kind IN (7, 16)) AS last_a,
        argMaxIf(toNullable(value), pos, name = 'e' AND kind IN (6, 7, 16)) AS last_e,
        argMinIf(toNullable(value), pos, name = 'A' AND kind = 1111) AS first_big_a,
        argMinIf(toNullable(value), pos, name = 'E' AND kind = 1111) AS first_big_e,
        argMinIf(toNullable(value), pos, name = 'e' AND kind = 1 AND marker = 'root') AS root_e,
        argMinIf(toNullable(value), pos, name = 'e' AND kind = 1) AS first_e
    FROM livetag WHERE name IN ('a', 'e', 'A', 'E') GROUP BY id, pubkey, kind, created_at),
named AS (
    SELECT id, pubkey, kind, created_at,
        if(kind = 1111, first_big_a, last_a) AS address,
        multiIf(kind = 1111, first_big_e, kind = 1, coalesce(root_e, first_e), last_e)
            AS version_id
    FROM per_event),
resolved AS (
    SELECT n.id AS id, n.pubkey AS pubkey, n.kind AS kind, n.created_at AS created_at,
        coalesce(if(match(n.address, '{addr_re}'),
                    replaceRegexpOne(n.address, '^\\\\+?0*', ''), NULL), v.vkey) AS target
    FROM named n LEFT JOIN versions v ON v.id = n.version_id),
counted AS (
    SELECT r.target AS target, r.kind AS kind, c.content AS content, row_number() OVER (
        PARTITION BY r.pubkey, r.target, multiIf(r.kind = 7, 0, r.kind IN (6, 16), 1, 2)
        ORDER BY r.created_at DESC, r.id ASC) AS rn
    FROM resolved r LEFT JOIN (SELECT id, content FROM ev WHERE kind = 7) c ON c.id = r.id
    WHERE r.target IS NOT NULL),
figures AS (
    SELECT target AS vkey,
        countIf(kind = 7 AND rn = 1 AND content <> '-') AS reactions,
        countIf(kind = 7 AND rn = 1 AND content = '-') AS downvotes,
        countIf(kind = 1111) AS comments,
        countIf(kind = 1) AS legacy,
        countIf(kind IN (6, 16) AND rn = 1) AS reposts
    FROM counted GROUP BY target),
stats AS (
    SELECT v.vkey AS vkey, v.id AS id, v.pubkey AS pubkey, v.kind AS kind,
        v.created_at AS created_at, v.d_tag AS d_tag,
        toInt64(coalesce(f.reactions, 0)) AS reactions,
        toInt64(coalesce(f.downvotes, 0)) AS downvotes,
        toInt64(coalesce(f.comments, 0)) AS comments,
        toInt64(coalesce(f.legacy, 0)) AS legacy,
        toInt64(coalesce(f.reposts, 0)) AS reposts
    FROM videos v LEFT JOIN figures f ON f.vkey = v.vkey)
"""

CH_STATS_ONE = """
{cte}
SELECT {cols} FROM stats WHERE vkey IN (SELECT vkey FROM versions WHERE id = {id})
"""

CH_ALL_FIGURES = "{cte} SELECT " + FIGURE_COLUMNS + " FROM stats"

CH_TRENDING = """
{cte}
SELECT vkey, (reactions + 2 * comments + 3 * reposts)
    * exp(-(greatest({now} - created_at, 0) / 3600.0) / 24.0) AS score
FROM stats WHERE {now} - created_at <= 604800
ORDER BY score DESC, kind IN (21, 22),
    if(kind IN (21, 22), 0, kind), if(kind IN (21, 22), id, pubkey),
    if(kind IN (21, 22), '', d_tag)
LIMIT 50
"""

CH_HASHTAGS = """
{cte}
SELECT lowerUTF8(t.value) AS hashtag, uniqExact(v.vkey) AS videos,
    uniqExact(v.pubkey) AS creators, max(v.created_at) AS last_used
FROM videos v INNER JOIN (SELECT id, value FROM tag WHERE name = 't' AND value <> '') t
    ON t.id = v.id
GROUP BY hashtag ORDER BY videos DESC, hashtag LIMIT 20
"""

CH_ACTIVE = """
{cte}
SELECT intDiv(created_at, 86400) AS day, uniqExact(pubkey) AS active
FROM live WHERE intDiv(created_at, 86400) BETWEEN {first_day} AND {today}
GROUP BY day ORDER BY day
"""


class Chdb:
    name = "chDB"

    def __init__(self, path):
        import chdb
        from chdb import session

        self.version = chdb.__version__
        self.path = path
        self.session = session.Session(path)

    def _query(self, sql):
        result = self.session.query(sql, "JSONCompact")
        text = result.bytes() if hasattr(result, "bytes") else bytes(result)
        if not text:
            return []
        return json.loads(text)["data"]

    def load(self, path):
        for statement in CH_LOAD:
            self._query(statement.format(path=_dq(os.path.abspath(path))))
        return int(self._query("SELECT count() FROM ev")[0][0])

    def _cte(self, now, act_filter=""):
        # ClickHouse string literals take backslash escapes: \\\\ above is
        # one backslash in the regular expression.
        return CH_CTE.format(now=int(now), act_filter=act_filter, addr_re=VIDEO_ADDRESS_RE.replace("\\", "\\\\"))

    def video_stats(self, event_id, now):
        key_of = f"(SELECT vkey FROM versions WHERE id = {_dq(event_id)})"
        candidates = (
            "SELECT id FROM tag WHERE name IN ('e', 'E') AND value IN "
            f"(SELECT id FROM versions WHERE vkey IN {key_of}) "
            "UNION ALL SELECT id FROM tag WHERE name IN ('a', 'A') AND "
            f"replaceRegexpOne(value, '^\\\\+?0*', '') IN {key_of}")
        sql = CH_STATS_ONE.format(
            cte=self._cte(now, f"AND id IN ({candidates})"), cols=FIGURE_COLUMNS,
            id=_dq(event_id)) + CH_SETTINGS
        rows = self._query(sql)
        return figures_row(rows[0]) if rows else None

    def all_figures(self, now):
        return {r[0]: figures_row(r) for r in self._query(
            CH_ALL_FIGURES.format(cte=self._cte(now)) + CH_SETTINGS)}

    def trending(self, now):
        return [(k, float(s)) for k, s in self._query(
            CH_TRENDING.format(cte=self._cte(now), now=int(now)) + CH_SETTINGS)]

    def hashtags(self, now):
        return [(t, int(n), int(c), int(last)) for t, n, c, last in self._query(
            CH_HASHTAGS.format(cte=self._cte(now)) + CH_SETTINGS)]

    def active(self, now, days=30):
        today = int(now) // 86400
        rows = {int(d): int(n) for d, n in self._query(CH_ACTIVE.format(
            cte=self._cte(now), first_day=today - days + 1, today=today) + CH_SETTINGS)}
        return [rows.get(d, 0) for d in range(today - days + 1, today + 1)]

    def close(self):
        try:
            self.session.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def figures_row(row):
    """(reactions, downvotes, comments, legacy_comments, reposts) of a row
    `vkey, reactions, downvotes, comments, legacy, reposts`."""
    return tuple(int(x) for x in row[1:6])


def timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started
