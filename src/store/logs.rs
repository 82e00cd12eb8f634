//! A deploy's log: every command's output line by line, bounded per deploy so a chatty build
//! cannot fill the disk. A long log keeps its head (how the deploy started) and its tail (where it
//! failed), with one marker line between them saying how many lines were dropped; each line keeps
//! the sequence number it was written with, so paging by `after` stays right while a deploy writes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use rusqlite::params;

use super::Store;
use crate::model::{now_rfc3339, DeployId, LogLine, LogSink, Stream};

/// The first lines of a deploy's log, always kept.
pub const LOG_HEAD_LINES: i64 = 10_000;
/// The last lines of a deploy's log, always kept.
pub const LOG_TAIL_LINES: i64 = 10_000;
/// Output lines kept per deploy at most; past it, one marker line between the head and the tail
/// says how many were dropped.
pub const MAX_LOG_LINES: i64 = LOG_HEAD_LINES + LOG_TAIL_LINES;
/// Characters kept of one line; command output arrives already cut below this (see `host`).
const MAX_LINE_CHARS: usize = 4_000;

/// The line counters of the deploys being written to.
pub(super) type Counters = Mutex<HashMap<DeployId, Weak<Mutex<i64>>>>;

/// Appends lines to one deploy's log. Resumes numbering after what is already stored, so a deploy
/// continued after approval keeps one ordered log. Writers of the same deploy alive at once (the
/// pipeline's and a notification's) share one counter: two counters would hand out the same
/// number twice, and the second line would be lost.
pub struct LogWriter {
    store: Store,
    deploy: DeployId,
    /// The next line's number. Held while the line is written, so lines are stored in the order
    /// of their numbers and the tail's marker only ever moves forward.
    next: Arc<Mutex<i64>>,
}

impl LogWriter {
    pub fn new(store: Store, deploy: DeployId) -> Self {
        let next = {
            let mut counters = store.inner.log_next.lock().unwrap_or_else(|e| e.into_inner());
            match counters.get(&deploy).and_then(Weak::upgrade) {
                Some(next) => next,
                None => {
                    counters.retain(|_, c| c.strong_count() > 0);
                    let next = Arc::new(Mutex::new(store.last_log_seq(&deploy).unwrap_or(0) + 1));
                    counters.insert(deploy.clone(), Arc::downgrade(&next));
                    next
                }
            }
        };
        Self { store, deploy, next }
    }

    pub fn info(&self, text: &str) {
        self.line(Stream::Info, text);
    }
}

impl LogSink for LogWriter {
    fn line(&self, stream: Stream, text: &str) {
        let text = cut_line(text);
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let seq = *next;
        *next += 1;
        match self.store.append_log(&self.deploy, seq, stream.as_str(), &text) {
            Ok(()) => self.store.notify(&self.deploy, super::Change::Log),
            Err(e) => self.store.note_write_error(&format!("storing a log line of deploy {}", self.deploy), &e),
        }
    }
}

/// At most [`MAX_LINE_CHARS`] characters, marked when cut like `host` marks the lines it cuts.
fn cut_line(text: &str) -> Cow<'_, str> {
    // Bytes bound characters: the common short line costs no scan.
    if text.len() <= MAX_LINE_CHARS {
        return Cow::Borrowed(text);
    }
    if text.chars().nth(MAX_LINE_CHARS).is_none() {
        return Cow::Borrowed(text);
    }
    // Room for the marker within the bound.
    let keep = text.char_indices().nth(MAX_LINE_CHARS - 80).map_or(text.len(), |(i, _)| i);
    Cow::Owned(format!("{}… [line cut: {} more bytes dropped]", &text[..keep], text.len() - keep))
}

fn dropped_marker(count: i64) -> String {
    format!(
        "[… {count} lines dropped here: a deploy's log keeps its first {LOG_HEAD_LINES} and its last {LOG_TAIL_LINES} lines]"
    )
}

impl Store {
    /// Stores line `seq`. Once the log is longer than head + tail, the line that falls out of the
    /// tail becomes the marker (its number, its time) and the previous marker goes: three
    /// statements in one transaction, only for lines past [`MAX_LOG_LINES`].
    fn append_log(&self, id: &DeployId, seq: i64, stream: &str, line: &str) -> rusqlite::Result<()> {
        let mut conn = self.conn();
        let insert = "INSERT OR IGNORE INTO logs (deploy_id, seq, ts, stream, line) VALUES (?1, ?2, ?3, ?4, ?5)";
        let leaving = seq - LOG_TAIL_LINES;
        if leaving <= LOG_HEAD_LINES {
            conn.prepare_cached(insert)?.execute(params![id.as_str(), seq, now_rfc3339(), stream, line])?;
            return Ok(());
        }
        let tx = conn.transaction()?;
        tx.prepare_cached(insert)?.execute(params![id.as_str(), seq, now_rfc3339(), stream, line])?;
        tx.prepare_cached("DELETE FROM logs WHERE deploy_id = ?1 AND seq > ?2 AND seq < ?3")?.execute(params![
            id.as_str(),
            LOG_HEAD_LINES,
            leaving
        ])?;
        tx.prepare_cached(
            "INSERT INTO logs (deploy_id, seq, ts, stream, line) VALUES (?1, ?2, ?3, 'info', ?4)
             ON CONFLICT (deploy_id, seq) DO UPDATE SET stream = 'info', line = excluded.line",
        )?
        .execute(params![id.as_str(), leaving, now_rfc3339(), dropped_marker(leaving - LOG_HEAD_LINES)])?;
        tx.commit()
    }

    fn last_log_seq(&self, id: &DeployId) -> rusqlite::Result<i64> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE deploy_id = ?1", [id.as_str()], |r| r.get(0))
    }

    /// One page of a deploy's log: the lines numbered above `after`, oldest first, at most
    /// `limit` of them, and none past the one that brings the text to `max_bytes` (a page always
    /// holds at least one line when there is one). The flag says whether lines past the page
    /// exist now.
    pub fn log_page(
        &self,
        id: &DeployId,
        after: i64,
        limit: usize,
        max_bytes: usize,
    ) -> rusqlite::Result<(Vec<LogLine>, bool)> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, ts, stream, line FROM logs WHERE deploy_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut rows =
            stmt.query(params![id.as_str(), after, limit.saturating_add(1).min(i64::MAX as usize) as i64])?;
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        while let Some(r) = rows.next()? {
            if lines.len() >= limit || (!lines.is_empty() && bytes >= max_bytes) {
                return Ok((lines, true));
            }
            let line = LogLine { seq: r.get(0)?, ts: r.get(1)?, stream: r.get(2)?, line: r.get(3)? };
            bytes += line.line.len();
            lines.push(line);
        }
        Ok((lines, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppName, StepName, Trigger, TriggerSource};
    use crate::store::NewDeploy;

    fn deploy(store: &Store) -> DeployId {
        store
            .insert_deploy(&NewDeploy {
                app: AppName::parse("a").unwrap(),
                trigger: Trigger {
                    source: TriggerSource::Api,
                    delivery: None,
                    git_ref: "refs/heads/main".into(),
                    requested_commit: None,
                },
                approve_migrations: false,
                reason: None,
                steps: vec![StepName::GitPull],
            })
            .unwrap()
            .deploy_id
    }

    fn all(store: &Store, id: &DeployId) -> Vec<LogLine> {
        store.log_page(id, 0, usize::MAX, usize::MAX).unwrap().0
    }

    #[test]
    fn two_writers_of_one_deploy_never_give_two_lines_the_same_number() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = deploy(&store);
        let (a, b) = (LogWriter::new(store.clone(), id.clone()), LogWriter::new(store.clone(), id.clone()));
        a.info("one");
        b.info("two");
        a.info("three");
        drop((a, b));
        let later = LogWriter::new(store.clone(), id.clone());
        later.info("four");
        let (lines, _) = store.log_page(&id, 0, 100, 1 << 20).unwrap();
        let text: Vec<(i64, &str)> = lines.iter().map(|l| (l.seq, l.line.as_str())).collect();
        assert_eq!(text, [(1, "one"), (2, "two"), (3, "three"), (4, "four")]);
    }

    #[test]
    fn a_long_log_keeps_its_head_and_its_tail_with_one_marker_saying_how_many_were_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = deploy(&store);
        let w = LogWriter::new(store.clone(), id.clone());
        for i in 1..=MAX_LOG_LINES {
            w.line(Stream::Stdout, &format!("line {i}"));
        }
        let lines = all(&store, &id);
        assert_eq!(lines.len() as i64, MAX_LOG_LINES, "a log within the bound is kept whole");
        assert!(lines.iter().zip(1..).all(|(l, n)| l.seq == n && l.line == format!("line {n}")));

        let written = MAX_LOG_LINES + 1_234;
        for i in MAX_LOG_LINES + 1..=written {
            w.line(Stream::Stdout, &format!("line {i}"));
        }
        let lines = all(&store, &id);
        assert_eq!(lines.len() as i64, MAX_LOG_LINES + 1);
        let head = &lines[..LOG_HEAD_LINES as usize];
        assert!(head.iter().enumerate().all(|(i, l)| l.seq == i as i64 + 1 && l.line == format!("line {}", l.seq)));
        let marker = &lines[LOG_HEAD_LINES as usize];
        assert_eq!(marker.stream, "info");
        assert!(marker.line.starts_with("[… 1234 lines dropped here"), "{}", marker.line);
        // The marker stands on the last dropped line's number; the tail keeps its own.
        assert_eq!(marker.seq, written - LOG_TAIL_LINES);
        let tail = &lines[LOG_HEAD_LINES as usize + 1..];
        assert_eq!(tail.len() as i64, LOG_TAIL_LINES);
        assert!(tail
            .iter()
            .zip(written - LOG_TAIL_LINES + 1..)
            .all(|(l, n)| l.seq == n && l.line == format!("line {n}")));

        // A second writer (a resumed deploy) continues the numbering and stays bounded.
        LogWriter::new(store.clone(), id.clone()).info("resumed");
        let lines = all(&store, &id);
        assert_eq!(lines.len() as i64, MAX_LOG_LINES + 1);
        assert_eq!(lines.last().unwrap().seq, written + 1);
        assert_eq!(lines.last().unwrap().line, "resumed");
        assert!(lines[LOG_HEAD_LINES as usize].line.starts_with("[… 1235 lines dropped here"));
    }

    #[test]
    fn a_reader_paging_while_lines_are_dropped_sees_every_kept_line_once_or_the_marker_for_those_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = deploy(&store);
        let w = LogWriter::new(store.clone(), id.clone());
        let mut seen: Vec<LogLine> = Vec::new();
        let mut after = 0;
        let written = MAX_LOG_LINES + 5_000;
        for i in 1..=written {
            w.line(Stream::Stdout, &format!("line {i}"));
            // A reader at half the writer's pace: past the head, lines drop from under it.
            if i % 10 == 0 {
                let (page, _) = store.log_page(&id, after, 5, usize::MAX).unwrap();
                after = page.last().map_or(after, |l| l.seq);
                seen.extend(page);
            }
        }
        loop {
            let (page, more) = store.log_page(&id, after, 500, usize::MAX).unwrap();
            after = page.last().map_or(after, |l| l.seq);
            seen.extend(page);
            if !more {
                break;
            }
        }
        assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "each line once, in order");
        // Every line is accounted for: shown, or dropped and counted by a marker standing where the
        // reader picks up again.
        let mut expected = 1;
        for l in &seen {
            if let Some(rest) = l.line.strip_prefix("[… ") {
                let count: i64 = rest.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(l.seq, LOG_HEAD_LINES + count, "{}", l.line);
            } else {
                assert_eq!(l.line, format!("line {}", l.seq));
                assert_eq!(l.seq, expected, "lines were skipped without a marker saying so");
            }
            expected = l.seq + 1;
        }
        assert_eq!(seen.last().unwrap().seq, written);
        let markers = seen.iter().filter(|l| l.line.starts_with("[… ")).count();
        assert!(markers > 1, "the reader should have fallen behind the tail while it moved: {markers} markers");
        assert_eq!(seen.iter().filter(|l| l.seq <= LOG_HEAD_LINES).count() as i64, LOG_HEAD_LINES);
    }

    #[test]
    fn a_page_stops_at_its_limit_or_its_byte_budget_and_says_whether_more_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = deploy(&store);
        let w = LogWriter::new(store.clone(), id.clone());
        for i in 1..=10 {
            w.line(Stream::Stdout, &format!("{i:03}"));
        }
        let seqs = |lines: &[LogLine]| lines.iter().map(|l| l.seq).collect::<Vec<_>>();
        let (page, more) = store.log_page(&id, 0, 4, usize::MAX).unwrap();
        assert_eq!((seqs(&page), more), (vec![1, 2, 3, 4], true));
        let (page, more) = store.log_page(&id, 8, 4, usize::MAX).unwrap();
        assert_eq!((seqs(&page), more), (vec![9, 10], false));
        let (page, more) = store.log_page(&id, 6, 4, 6).unwrap();
        assert_eq!((seqs(&page), more), (vec![7, 8], true), "3 bytes a line: the second reaches 6");
        let (page, more) = store.log_page(&id, 0, 4, 0).unwrap();
        assert_eq!((seqs(&page), more), (vec![1], true), "at least one line");
        let (page, more) = store.log_page(&id, 10, 4, usize::MAX).unwrap();
        assert_eq!((seqs(&page), more), (vec![], false));
    }

    #[test]
    fn a_line_too_long_for_the_store_is_cut_and_marked() {
        assert_eq!(cut_line("short"), "short");
        let exact = "é".repeat(MAX_LINE_CHARS);
        assert_eq!(cut_line(&exact), exact);
        let long = "é".repeat(MAX_LINE_CHARS + 1);
        let cut = cut_line(&long);
        assert!(cut.chars().count() <= MAX_LINE_CHARS);
        assert!(cut.ends_with(&format!("… [line cut: {} more bytes dropped]", 81 * 2)), "{cut}");
    }
}
