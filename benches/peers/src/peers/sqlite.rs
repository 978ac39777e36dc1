//! SQLite with nostr-rs-relay's schema (v18: tables `event` and `tag`, their
//! indexes and pragmas), its write path (the same statements per event,
//! including one `tag` row per single-letter tag) and the SQL its
//! `query_from_filter` generates for each filter shape, rewritten here from
//! its published source (src/repo/sqlite.rs, src/repo/sqlite_migration.rs).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow};
use nostr::prelude::*;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Transaction, params, params_from_iter};

use super::{Config, DurabilityClass, Ingested, Peer, parse_nostr_batch, run_batches};
use crate::dataset::Dataset;
use crate::workload::{NOTE, Query, REACTION};

/// nostr-rs-relay's database file name.
const DB_FILE: &str = "nostr.db";

/// nostr-rs-relay runs `PRAGMA optimize` on its writer after this many
/// stored events (`EVENT_COUNT_OPTIMIZE_TRIGGER`), which is what gives the
/// query planner statistics.
const OPTIMIZE_EVERY: u64 = 500;

/// The event and tag tables of nostr-rs-relay's schema v18 with every index
/// on them (its NIP-05, account and invoice tables hold no events and are
/// left out).
const SCHEMA: &str = r#"
PRAGMA encoding = "UTF-8";
PRAGMA journal_mode = WAL;
PRAGMA auto_vacuum = FULL;
PRAGMA main.synchronous = NORMAL;
PRAGMA foreign_keys = ON;
PRAGMA application_id = 1654008667;
PRAGMA user_version = 18;
CREATE TABLE IF NOT EXISTS event (
    id INTEGER PRIMARY KEY,
    event_hash BLOB NOT NULL,
    first_seen INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    author BLOB NOT NULL,
    delegated_by BLOB,
    kind INTEGER NOT NULL,
    hidden INTEGER,
    content TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS event_hash_index ON event(event_hash);
CREATE INDEX IF NOT EXISTS author_index ON event(author);
CREATE INDEX IF NOT EXISTS kind_index ON event(kind);
CREATE INDEX IF NOT EXISTS created_at_index ON event(created_at);
CREATE INDEX IF NOT EXISTS delegated_by_index ON event(delegated_by);
CREATE INDEX IF NOT EXISTS event_composite_index ON event(kind,created_at);
CREATE INDEX IF NOT EXISTS kind_author_index ON event(kind,author);
CREATE INDEX IF NOT EXISTS kind_created_at_index ON event(kind,created_at);
CREATE INDEX IF NOT EXISTS author_created_at_index ON event(author,created_at);
CREATE INDEX IF NOT EXISTS author_kind_index ON event(author,kind);
CREATE INDEX IF NOT EXISTS event_expiration ON event(expires_at);
CREATE TABLE IF NOT EXISTS tag (
    id INTEGER PRIMARY KEY,
    event_id INTEGER NOT NULL,
    name TEXT,
    value TEXT,
    value_hex BLOB,
    created_at INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    FOREIGN KEY(event_id) REFERENCES event(id) ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS tag_val_index ON tag(value);
CREATE INDEX IF NOT EXISTS tag_composite_index ON tag(event_id,name,value);
CREATE INDEX IF NOT EXISTS tag_name_eid_index ON tag(name,event_id,value);
CREATE INDEX IF NOT EXISTS tag_covering_index ON tag(name,kind,value,created_at,event_id);
"#;

/// The pragmas nostr-rs-relay runs on every connection.
const STARTUP: &str = r#"
PRAGMA main.synchronous = NORMAL;
PRAGMA foreign_keys = ON;
PRAGMA journal_size_limit = 32768;
PRAGMA temp_store = 2;
PRAGMA main.cache_size = 20000;
PRAGMA mmap_size = 4294967296;
"#;

pub fn how_driven(config: &Config) -> String {
    format!(
        "rusqlite (bundled SQLite), nostr-rs-relay's v18 `event`/`tag` schema, indexes and \
         pragmas, WAL, `synchronous = {}`{}; W1: rust-nostr `Event::from_json` + \
         `Event::verify` in the harness, W1b: `from_json` only; its per-event statements \
         (replaceable/addressable checks, `INSERT OR IGNORE` event, one `tag` row per \
         single-letter tag, NIP-09 checks) as cached statements, `PRAGMA optimize` after \
         every {OPTIMIZE_EVERY} stored events as it does, but one transaction per \
         batch of {} (nostr-rs-relay commits each event alone) from {} writer thread(s) \
         serialized on one connection; queries are the SQL its `query_from_filter` builds \
         (`INDEXED BY` hints, `ORDER BY created_at`), W6 the same WHERE clause with \
         `count(*)` (nostr-rs-relay has no COUNT)",
        sync_pragma(config.durability),
        match config.durability {
            DurabilityClass::Always => {
                " (nostr-rs-relay runs NORMAL; FULL fsyncs the WAL at every commit, the same \
                 class as the others)"
            }
            DurabilityClass::Relaxed => " (nostr-rs-relay's own setting)",
        },
        config.batch,
        config.writers
    )
}

fn sync_pragma(class: DurabilityClass) -> &'static str {
    match class {
        DurabilityClass::Always => "FULL",
        DurabilityClass::Relaxed => "NORMAL",
    }
}

pub struct SqlitePeer {
    conn: Mutex<Connection>,
    /// Events stored since the last `PRAGMA optimize`.
    since_optimize: AtomicU64,
    config: Config,
}

impl SqlitePeer {
    pub fn open(dir: &Path, config: &Config) -> anyhow::Result<SqlitePeer> {
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open SQLite at {}", path.display()))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(STARTUP)?;
        conn.execute_batch(&format!(
            "PRAGMA main.synchronous = {};",
            sync_pragma(config.durability)
        ))?;
        Ok(SqlitePeer {
            conn: Mutex::new(conn),
            since_optimize: AtomicU64::new(0),
            config: config.clone(),
        })
    }
}

/// nostr-rs-relay's `is_replaceable`: kinds 0, 3, 41 and 10000-19999.
fn is_replaceable(kind: u16) -> bool {
    kind == 0 || kind == 3 || kind == 41 || (10_000..20_000).contains(&kind)
}

/// nostr-rs-relay's `distinct_param`: the `d` value of an addressable event
/// ("" when it has none).
fn distinct_param(event: &Event) -> Option<String> {
    if !(30_000..40_000).contains(&event.kind.as_u16()) {
        return None;
    }
    Some(
        event
            .tags
            .iter()
            .map(|t| t.as_slice())
            .find(|t| t.len() >= 2 && t[0] == "d")
            .map(|t| t[1].clone())
            .unwrap_or_default(),
    )
}

fn expiration(event: &Event) -> Option<u64> {
    event
        .tags
        .iter()
        .map(|t| t.as_slice())
        .find(|t| t.len() >= 2 && t[0] == "expiration")
        .and_then(|t| t[1].parse().ok())
}

/// nostr-rs-relay's `persist_event` inside the batch's transaction; true
/// when the event was stored (and is visible).
fn persist(tx: &Transaction<'_>, event: &Event) -> rusqlite::Result<bool> {
    let kind = event.kind.as_u16();
    let id = event.id.as_bytes().as_slice();
    let author = event.pubkey.as_bytes().as_slice();
    let created_at = event.created_at.as_secs() as i64;
    if (20_000..30_000).contains(&kind) {
        return Ok(false); // ephemeral: the relay never stores these
    }
    if is_replaceable(kind) {
        let newer: Option<i64> = tx
            .prepare_cached(
                "SELECT e.id FROM event e INDEXED BY author_index WHERE e.author=? AND e.kind=? AND e.created_at >= ? LIMIT 1;",
            )?
            .query_row(params![author, kind, created_at], |row| row.get(0))
            .optional()?;
        if newer.is_some() {
            return Ok(false);
        }
    }
    let d_tag = distinct_param(event);
    if let Some(d) = &d_tag {
        let newer: Option<i64> = tx
            .prepare_cached(
                "SELECT e.id FROM event e LEFT JOIN tag t ON e.id=t.event_id WHERE e.author=? AND e.kind=? AND t.name='d' AND t.value=? AND e.created_at >= ? LIMIT 1;",
            )?
            .query_row(params![author, kind, d, created_at], |row| row.get(0))
            .optional()?;
        if newer.is_some() {
            return Ok(false);
        }
    }
    let content = serde_json::to_string(event)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO event (event_hash, created_at, expires_at, kind, author, delegated_by, content, first_seen, hidden) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, strftime('%s','now'), FALSE);",
        )?
        .execute(params![
            id,
            created_at,
            expiration(event).map(|e| e as i64),
            kind,
            author,
            Option::<Vec<u8>>::None,
            content
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    let row = tx.last_insert_rowid();
    {
        let mut insert_tag = tx.prepare_cached(
            "INSERT OR IGNORE INTO tag (event_id, name, value, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for tag in event.tags.iter().map(|t| t.as_slice()) {
            if tag.len() >= 2 && tag[0].chars().count() == 1 {
                insert_tag.execute(params![row, tag[0], tag[1], kind, created_at])?;
            }
        }
    }
    if is_replaceable(kind) {
        tx.prepare_cached(
            "DELETE FROM event WHERE kind=? and author=? and id NOT IN (SELECT id FROM event INDEXED BY author_kind_index WHERE kind=? AND author=? ORDER BY created_at DESC LIMIT 1)",
        )?
        .execute(params![kind, author, kind, author])?;
    }
    if let Some(d) = &d_tag {
        tx.prepare_cached(
            "DELETE FROM event WHERE kind=? AND author=? AND id IN (SELECT e.id FROM event e LEFT JOIN tag t ON e.id=t.event_id WHERE e.kind=? AND e.author=? AND t.name='d' AND t.value=? ORDER BY t.created_at DESC LIMIT -1 OFFSET 1);",
        )?
        .execute(params![kind, author, kind, author, d])?;
    }
    if kind == 5 {
        let targets: Vec<Vec<u8>> = event
            .tags
            .iter()
            .map(|t| t.as_slice())
            .filter(|t| t.len() >= 2 && t[0] == "e" && t[1].len() == 64)
            .filter_map(|t| hex::decode(&t[1]).ok())
            .collect();
        if !targets.is_empty() {
            let sql = format!(
                "UPDATE event SET hidden=TRUE WHERE kind!=5 AND author=? AND event_hash IN ({})",
                repeat_vars(targets.len())
            );
            let mut values: Vec<Value> = vec![Value::Blob(author.to_vec())];
            values.extend(targets.into_iter().map(Value::Blob));
            tx.prepare_cached(&sql)?.execute(params_from_iter(values))?;
        }
    } else {
        let deleted: Option<i64> = tx
            .prepare_cached(
                "SELECT e.id FROM event e WHERE e.author=? AND e.id IN (SELECT t.event_id FROM tag t WHERE t.name='e' AND t.kind=5 AND t.value=?) LIMIT 1;",
            )?
            .query_row(params![author, event.id.to_hex()], |row| row.get(0))
            .optional()?;
        if deleted.is_some() {
            tx.prepare_cached("UPDATE event SET hidden=TRUE WHERE id=?")?
                .execute(params![row])?;
            return Ok(false);
        }
    }
    Ok(true)
}

fn repeat_vars(count: usize) -> String {
    vec!["?"; count].join(",")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The SQL and parameters nostr-rs-relay's `query_from_filter` builds for
/// each workload's filter (components in its order: authors, kinds, ids,
/// tags, since/until, expiry), and whether the query is a count.
fn sql_for(query: &Query<'_>) -> (String, Vec<Value>) {
    let mut params: Vec<Value> = Vec::new();
    let mut components: Vec<String> = Vec::new();
    let index;
    let mut limit = None;
    let mut select = "e.content";
    let mut until_clause = None;
    match *query {
        Query::Id(id) => {
            index = Some("event_hash_index");
            components.push("(event_hash=?)".into());
            params.push(Value::Blob(id.to_vec()));
        }
        Query::AuthorFeed {
            author,
            limit: page,
        } => {
            // With a limit, its override is the (author, created_at) index.
            index = Some("author_created_at_index");
            components.push("(author=?)".into());
            params.push(Value::Blob(author.to_vec()));
            components.push(format!("kind IN ({NOTE})"));
            limit = Some(page);
        }
        Query::FollowFeed {
            authors,
            limit: page,
            until,
        } => {
            index = Some("author_created_at_index");
            components.push(format!(
                "({})",
                vec!["author=?"; authors.len()].join(" OR ")
            ));
            params.extend(authors.iter().map(|a| Value::Blob(a.to_vec())));
            components.push(format!("kind IN ({NOTE})"));
            until_clause = until.map(|u| format!("created_at <= {u}"));
            limit = Some(page);
        }
        Query::Reactions(target) | Query::CountReactions(target) => {
            index = None;
            components.push(format!("kind IN ({REACTION})"));
            components.push(format!(
                "e.id IN (SELECT t.event_id FROM tag t WHERE (name=? AND value IN (?) AND kind IN ({REACTION})  ))"
            ));
            params.push(Value::Text("e".into()));
            params.push(Value::Text(hex::encode(target)));
            if let Query::CountReactions(_) = query {
                select = "count(*)";
            }
        }
    }
    components.extend(until_clause);
    components.push("(expires_at IS NULL OR expires_at > ?)".into());
    params.push(Value::Integer(unix_now()));
    let indexed = index.map_or(String::new(), |i| format!("INDEXED BY {i}"));
    let mut sql = format!(
        "SELECT {select} FROM event e {indexed} WHERE hidden!=TRUE AND {}",
        components.join(" AND ")
    );
    if select == "e.content" {
        match limit {
            Some(limit) => sql.push_str(&format!(" ORDER BY e.created_at DESC LIMIT {limit}")),
            None => sql.push_str(" ORDER BY e.created_at ASC"),
        }
    }
    (sql, params)
}

impl Peer for SqlitePeer {
    fn ingest(&mut self, data: &Dataset, verify: bool) -> anyhow::Result<Ingested> {
        let (conn, since_optimize) = (&self.conn, &self.since_optimize);
        run_batches(
            data.len(),
            self.config.batch,
            self.config.writers,
            |range| {
                let (events, invalid) = parse_nostr_batch(data, range, verify);
                let mut conn = conn
                    .lock()
                    .map_err(|_| anyhow!("a SQLite writer thread panicked"))?;
                let tx = conn.transaction()?;
                let mut stored = 0;
                for event in &events {
                    if persist(&tx, event)? {
                        stored += 1;
                    }
                }
                tx.commit()?;
                let pending = since_optimize.fetch_add(stored, Ordering::Relaxed) + stored;
                if pending >= OPTIMIZE_EVERY {
                    since_optimize.store(0, Ordering::Relaxed);
                    conn.execute_batch("PRAGMA optimize;")?;
                }
                Ok(Ingested {
                    stored,
                    refused: events.len() as u64 - stored,
                    invalid,
                })
            },
        )
    }

    fn query(&mut self, query: &Query<'_>, out: &mut Vec<u8>) -> anyhow::Result<u64> {
        let conn = self
            .conn
            .get_mut()
            .map_err(|_| anyhow!("a SQLite writer thread panicked"))?;
        let (sql, params) = sql_for(query);
        let mut statement = conn.prepare_cached(&sql)?;
        if let Query::CountReactions(_) = query {
            let n: i64 = statement.query_row(params_from_iter(params), |row| row.get(0))?;
            return Ok(n as u64);
        }
        let mut rows = statement.query(params_from_iter(params))?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            out.extend_from_slice(row.get_ref(0)?.as_str()?.as_bytes());
            out.push(b'\n');
            n += 1;
        }
        Ok(n)
    }

    fn close(self: Box<Self>) -> anyhow::Result<()> {
        let conn = self
            .conn
            .into_inner()
            .map_err(|_| anyhow!("a SQLite writer thread panicked"))?;
        // The last connection's close checkpoints the WAL into the database.
        conn.close()
            .map_err(|(_, e)| anyhow!("closing SQLite: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_feed_sql_has_the_relay_shape() {
        let authors = [[1u8; 32], [2u8; 32]];
        let (sql, params) = sql_for(&Query::FollowFeed {
            authors: &authors,
            limit: 100,
            until: Some(42),
        });
        assert_eq!(
            sql,
            "SELECT e.content FROM event e INDEXED BY author_created_at_index WHERE hidden!=TRUE \
             AND (author=? OR author=?) AND kind IN (1) AND created_at <= 42 AND (expires_at IS \
             NULL OR expires_at > ?) ORDER BY e.created_at DESC LIMIT 100"
        );
        assert_eq!(params.len(), 3);
    }

    #[test]
    fn tag_count_sql_uses_the_tag_subquery() {
        let target = [7u8; 32];
        let (sql, _) = sql_for(&Query::CountReactions(&target));
        assert!(sql.starts_with("SELECT count(*) FROM event e  WHERE hidden!=TRUE AND kind IN (7) AND e.id IN (SELECT t.event_id FROM tag t"), "{sql}");
        assert!(!sql.contains("ORDER BY"));
    }
}
