//! Reading a command's output in bounded chunks: every line reaches the sink redacted, a long one
//! cut as it is read and marked, and the caller gets at most `KEEP_BYTES` of the text back.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::remote_stop::PidMarker;
use super::{LogSink, Redactor, Stream, KEEP_BYTES};

/// Reads what a detached command appended to its output file since the last call, line by line
/// as [`pump`] does (bounded, long lines cut and marked).
pub(super) struct FileFollower {
    path: PathBuf,
    offset: u64,
    held: Vec<u8>,
    /// The current line's length so far, held or not.
    line_len: usize,
    pub(super) kept: String,
}

impl FileFollower {
    pub(super) fn new(path: &std::path::Path) -> Self {
        Self { path: path.to_owned(), offset: 0, held: Vec::new(), line_len: 0, kept: String::new() }
    }

    pub(super) fn pump(&mut self, redactor: &Redactor, sink: &dyn LogSink) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            for part in buf[..n].split_inclusive(|&b| b == b'\n') {
                let (text, ends) = match part.strip_suffix(b"\n") {
                    Some(t) => (t, true),
                    None => (part, false),
                };
                let room = HOLD_LINE_BYTES.saturating_sub(self.held.len());
                self.held.extend_from_slice(&text[..text.len().min(room)]);
                self.line_len += text.len();
                if ends {
                    self.emit(redactor, sink);
                }
            }
        }
    }

    pub(super) fn finish(&mut self, redactor: &Redactor, sink: &dyn LogSink) {
        if self.line_len > 0 {
            self.emit(redactor, sink);
        }
    }

    fn emit(&mut self, redactor: &Redactor, sink: &dyn LogSink) {
        emit_line(&self.held, self.line_len, Stream::Stderr, sink, redactor, &mut self.kept);
        self.held.clear();
        self.line_len = 0;
    }
}

pub(super) async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    stream: Stream,
    sink: &dyn LogSink,
    redactor: &Redactor,
    marker: Option<&PidMarker>,
) -> String {
    // Reads the stream in chunks of `READ_CHUNK`, never a whole line at once, so memory stays
    // bounded whatever a line's length: each line reaches the sink redacted, one longer than
    // `SINK_LINE_BYTES` cut and saying how many bytes were dropped. Returns the redacted text, at
    // most `KEEP_BYTES` of it, for callers that parse it. A remote shell's pid line (`marker`) is
    // taken out: it reaches neither.
    let mut kept = String::new();
    let mut reader = BufReader::with_capacity(READ_CHUNK, reader);
    let mut held: Vec<u8> = Vec::new();
    // The current line's length so far, held or not.
    let mut line_len = 0usize;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (part, ends) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let room = HOLD_LINE_BYTES.saturating_sub(held.len());
        held.extend_from_slice(&part[..part.len().min(room)]);
        line_len += part.len();
        let used = part.len() + usize::from(ends);
        reader.consume(used);
        if ends {
            let is_marker = line_len == held.len() && marker.is_some_and(|m| m.take(&held));
            if !is_marker {
                emit_line(&held, line_len, stream, sink, redactor, &mut kept);
            }
            held.clear();
            line_len = 0;
        }
    }
    // The last line, when the output does not end with a newline.
    if line_len > 0 {
        emit_line(&held, line_len, stream, sink, redactor, &mut kept);
    }
    kept
}

/// Bytes of one output line that reach the sink; the rest of a longer line is counted and
/// dropped as it is read. Below the store's 4,000-character cut, so the cut marker survives it.
const SINK_LINE_BYTES: usize = 3_900;
/// Bytes of one line held while it is read: a line up to this size (one long JSON document that
/// a caller parses) is still returned whole; past it, the rest is counted, never held.
const HOLD_LINE_BYTES: usize = KEEP_BYTES;
/// One read from the pipe; with the held line, all the memory a stream costs.
const READ_CHUNK: usize = 64 * 1024;

/// One line of [`pump`]: `held` is its start, `line_len` its whole length.
fn emit_line(held: &[u8], line_len: usize, stream: Stream, sink: &dyn LogSink, redactor: &Redactor, kept: &mut String) {
    let overflowed = line_len > held.len();
    let bytes = if overflowed { without_partial_char(held) } else { held };
    let mut line = redactor.redact(String::from_utf8_lossy(bytes).trim_end_matches(['\n', '\r']));
    if overflowed {
        drop_partial_secret(&mut line, redactor);
    }
    if line.len() <= SINK_LINE_BYTES && !overflowed {
        sink.line(stream, &line);
    } else {
        let cut = line.floor_char_boundary(SINK_LINE_BYTES);
        let dropped = (line.len() - cut) + (line_len - bytes.len());
        sink.line(stream, &format!("{}… [line cut: {dropped} more bytes dropped]", &line[..cut]));
    }
    if kept.len() < KEEP_BYTES {
        let take = line.floor_char_boundary(KEEP_BYTES - kept.len() - 1);
        kept.push_str(&line[..take]);
        kept.push('\n');
    }
}

/// `b` without a UTF-8 sequence cut off at its end (the rest of it was not held).
fn without_partial_char(b: &[u8]) -> &[u8] {
    let last_start = (b.len().saturating_sub(4)..b.len()).rev().find(|&i| b[i] & 0xC0 != 0x80);
    match last_start {
        Some(i) if std::str::from_utf8(&b[i..]).is_err_and(|e| e.error_len().is_none()) => &b[..i],
        _ => b,
    }
}

/// A line cut while being read may end with the start of a secret whose rest was never held, so
/// redaction could not see it: that start goes too.
fn drop_partial_secret(line: &mut String, redactor: &Redactor) {
    while let Some(k) = redactor
        .secrets
        .iter()
        .find_map(|s| (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && line.ends_with(&s[..k])))
    {
        line.truncate(line.len() - k);
    }
}

#[cfg(test)]
mod pump_tests {
    use super::*;
    use crate::host::{Cmd, Host};
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    /// Keeps every line it gets.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);
    impl LogSink for Lines {
        fn line(&self, _: Stream, text: &str) {
            self.0.lock().unwrap().push(text.to_owned());
        }
    }

    #[test]
    fn a_followed_file_hands_on_lines_cut_marked_and_redacted_as_they_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let redactor = Redactor::new(["s3cr3t-value".to_owned()]);
        let sink = Lines::default();
        let mut follow = FileFollower::new(&path);
        std::fs::write(&path, "first s3cr3t-value\nsec").unwrap();
        follow.pump(&redactor, &sink);
        assert_eq!(sink.0.lock().unwrap().clone(), ["first [REDACTED]"], "a partial line waits for its end");
        let long = "x".repeat(1_000_000);
        std::fs::write(&path, format!("first s3cr3t-value\nsecond\n{long}\nlast")).unwrap();
        follow.pump(&redactor, &sink);
        follow.finish(&redactor, &sink);
        let lines = sink.0.lock().unwrap().clone();
        assert_eq!(lines[1], "second");
        assert!(lines[2].len() < 4_000 && lines[2].ends_with("more bytes dropped]"), "{}", &lines[2][3_800..]);
        assert_eq!(lines[3], "last");
        assert!(follow.kept.len() <= KEEP_BYTES);
    }
    impl Lines {
        fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    fn peak_rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    async fn pump_bytes(data: &[u8], redactor: &Redactor) -> (Vec<String>, String) {
        let sink = Lines::default();
        let kept = pump(data, Stream::Stdout, &sink, redactor, None).await;
        (sink.all(), kept)
    }

    /// Set in the process that measures alone (see below).
    const ALONE: &str = "KUA_PUMP_TEST_ALONE";

    #[tokio::test]
    async fn a_50_mb_line_without_newline_reaches_the_sink_cut_and_marked_and_is_never_held() {
        // Peak memory is the whole process's: the other tests running beside this one would count
        // too. So the measuring run is this test alone, in a process of its own.
        if std::env::var_os(ALONE).is_none() {
            let name = "host::pump::pump_tests::a_50_mb_line_without_newline_reaches_the_sink_cut_and_marked_and_is_never_held";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--nocapture", "--test-threads", "1"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && text.contains("1 passed"), "the measuring run failed:\n{text}");
            return;
        }
        const LEN: usize = 50_000_000;
        let sink = Lines::default();
        let before = peak_rss_kib();
        let script = format!("head -c {LEN} /dev/zero | tr '\\0' x; echo ' end'; echo after; printf last");
        let out = Host::local().run(&Cmd::new(["sh", "-c", &script]), &CancellationToken::new(), &sink).await.unwrap();
        let grown_mib = (peak_rss_kib() - before) / 1024;
        assert!(out.success());
        let lines = sink.all();
        assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(|l| l.len()).collect::<Vec<_>>());
        let dropped = LEN + " end".len() - SINK_LINE_BYTES;
        assert_eq!(lines[0], format!("{}… [line cut: {dropped} more bytes dropped]", "x".repeat(SINK_LINE_BYTES)));
        assert_eq!(lines[1..], ["after", "last"]);
        assert!(out.stdout.len() <= KEEP_BYTES, "{}", out.stdout.len());
        assert!(out.stdout.starts_with("xxxx"));
        // Holding the line, as whole-line reads do, would take at least its 50 MB.
        assert!(grown_mib < 40, "the test process grew by {grown_mib} MiB while reading a 50 MB line");
    }

    #[tokio::test]
    async fn a_remote_shell_s_pid_line_is_taken_out_and_everything_around_it_passes() {
        let marker = PidMarker::new();
        let pid_line = marker.line_for("4711");
        // What a login shell's rc file printed comes first; the command's own lines after.
        let data = format!("motd line\n{pid_line}\nerror: no such image\n{pid_line}\n");
        let sink = Lines::default();
        let kept = pump(data.as_bytes(), Stream::Stderr, &sink, &Redactor::default(), Some(&marker)).await;
        assert_eq!(marker.pid(), Some(4711));
        assert_eq!(sink.all(), ["motd line", "error: no such image", pid_line.as_str()], "only the first is ours");
        assert_eq!(kept, format!("motd line\nerror: no such image\n{pid_line}\n"));
    }

    #[tokio::test]
    async fn ordinary_output_reaches_the_sink_and_the_caller_line_by_line_as_printed() {
        let (lines, kept) = pump_bytes(b"one\r\n\ntwo  \nthree", &Redactor::default()).await;
        assert_eq!(lines, ["one", "", "two  ", "three"]);
        assert_eq!(kept, "one\n\ntwo  \nthree\n");
        let (lines, kept) = pump_bytes(b"", &Redactor::default()).await;
        assert!(lines.is_empty());
        assert_eq!(kept, "");
    }

    #[tokio::test]
    async fn a_line_of_some_kilobytes_is_cut_for_the_log_but_returned_whole_to_the_caller() {
        // One JSON document on one line, as `docker inspect --format '{{json .}}'` prints.
        let doc = format!("{{\"k\": \"{}\"}}", "v".repeat(100_000));
        let (lines, kept) = pump_bytes(format!("{doc}\nnext\n").as_bytes(), &Redactor::default()).await;
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("{\"k\": \"vvv"));
        assert!(lines[0].ends_with(&format!("… [line cut: {} more bytes dropped]", doc.len() - SINK_LINE_BYTES)));
        assert_eq!(lines[1], "next");
        assert_eq!(kept, format!("{doc}\nnext\n"));
    }

    #[tokio::test]
    async fn the_text_returned_stays_within_its_bound_whatever_the_lines() {
        let mut data = Vec::new();
        for _ in 0..100 {
            data.extend_from_slice(&[b'a'; 10_000]);
            data.push(b'\n');
        }
        data.extend_from_slice(&vec![b'b'; 3 * KEEP_BYTES]);
        let (lines, kept) = pump_bytes(&data, &Redactor::default()).await;
        assert_eq!(lines.len(), 101);
        assert!(lines.iter().all(|l| l.len() < 4_000));
        assert!(kept.len() <= KEEP_BYTES, "{}", kept.len());
        assert!(kept.starts_with(&format!("{}\n", "a".repeat(10_000))));
    }

    #[tokio::test]
    async fn cuts_fall_between_characters_never_inside_one() {
        let wide = "é".repeat(3_000);
        let huge = "€".repeat(HOLD_LINE_BYTES);
        let (lines, kept) = pump_bytes(format!("{wide}\n{huge}\n").as_bytes(), &Redactor::default()).await;
        assert!(lines[0].starts_with("ééé") && lines[0].contains("line cut"));
        assert!(!lines.concat().contains('\u{FFFD}'));
        assert!(!kept.contains('\u{FFFD}'), "a character was cut in two in the kept text");
    }

    #[tokio::test]
    async fn a_secret_is_redacted_wherever_the_cut_falls_and_never_shown_in_part() {
        let r = Redactor::new(["hunter22-secret".to_owned()]);
        // Across the log's cut: redacted before cutting.
        let near_log_cut = format!("{}hunter22-secret{}", "x".repeat(SINK_LINE_BYTES - 4), "y".repeat(100));
        // Across the end of what is held: its start is dropped, since its end was never read.
        let near_hold_end = format!("{}hunter22-secret{}", "x".repeat(HOLD_LINE_BYTES - 6), "y".repeat(100));
        let (lines, kept) = pump_bytes(format!("{near_log_cut}\n").as_bytes(), &r).await;
        assert!(lines[0].starts_with(&format!("{}[RED", "x".repeat(SINK_LINE_BYTES - 4))), "{}", lines[0]);
        assert!(kept.contains("[REDACTED]") && !kept.contains("hunter"));
        let (lines, kept) = pump_bytes(format!("{near_hold_end}\n").as_bytes(), &r).await;
        assert!(lines[0].contains("line cut") && !lines[0].contains("hunter"));
        assert_eq!(kept, format!("{}\n", "x".repeat(HOLD_LINE_BYTES - 6)));
    }
}
