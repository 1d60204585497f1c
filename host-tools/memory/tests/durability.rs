//! `kill -9` of a process writing conversations: everything it reported committed is there afterwards, in
//! order, and the database opens and passes SQLite's integrity check.

use enigma_memory::fake::HashEmbeddings;
use enigma_memory::Store;
use enigma_modules::capability::ChatMessage;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const WRITER: &str = "ENIGMA_MEMORY_KILL_TEST_DB";

/// The child's side: runs only when the parent starts this test binary with the database's path; writes
/// until it is killed, printing each commit after it returns.
#[test]
fn writer_child() {
    let Some(path) = std::env::var_os(WRITER) else {
        return;
    };
    let mut s = Store::open(std::path::Path::new(&path)).unwrap();
    let e = HashEmbeddings::new("hash", 64);
    let c = s.create_conversation("killed mid-write").unwrap();
    let mut out = std::io::stdout().lock();
    // On a line of its own: the harness has written "test writer_child ... " without a line end.
    writeln!(out, "\nconversation {c}").unwrap();
    for i in 0u64.. {
        let text = format!("message {i}");
        s.append(c, &ChatMessage::user(text.clone())).unwrap();
        writeln!(out, "committed message {i}").unwrap();
        if i % 5 == 0 {
            let v = e.vector(&text);
            let ids = s.add_passages("hash", &[(&text, "note", &v)]).unwrap();
            writeln!(out, "committed passage {}", ids[0]).unwrap();
        }
        out.flush().unwrap();
    }
}

#[cfg(unix)]
#[test]
fn kill_9_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(WRITER, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut conversation, mut messages, mut passages) = (None, 0u64, Vec::new());
        // Kill at a different point each round.
        let stop_after = 150 + 97 * round;
        while let Some(Ok(line)) = lines.next() {
            if let Some(c) = line.strip_prefix("conversation ") {
                conversation = Some(c.parse::<i64>().unwrap());
            } else if line.starts_with("committed message ") {
                messages += 1;
            } else if let Some(id) = line.strip_prefix("committed passage ") {
                passages.push(id.parse::<i64>().unwrap());
            }
            if messages >= stop_after {
                break;
            }
        }
        // SIGKILL: no destructor, no flush, no checkpoint runs in the child.
        child.kill().unwrap();
        child.wait().unwrap();
        let c = conversation.expect("the writer started");
        assert!(messages >= stop_after, "the writer stopped early");

        let s = Store::open(&path).unwrap();
        s.check().unwrap();
        let stored = s.messages(c).unwrap();
        assert!(
            stored.len() as u64 >= messages,
            "round {round}: {} messages stored, {messages} reported committed",
            stored.len()
        );
        for (i, m) in stored.iter().enumerate() {
            assert_eq!(
                m.content,
                format!("message {i}"),
                "round {round}: order or content"
            );
        }
        let kept: Vec<i64> = s.passages().unwrap().iter().map(|p| p.id).collect();
        for id in &passages {
            assert!(kept.contains(id), "round {round}: passage {id} lost");
        }
    }
}
