//! The memory database: conversations, export and import, passages per embedding model, the saved graph,
//! and the errors a person sees.

use enigma_memory::fake::HashEmbeddings;
use enigma_memory::{Error, Store};
use enigma_modules::capability::{ChatMessage, Embeddings};
use enigma_testkit::XorShift;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("memory.db")).unwrap();
    (dir, s)
}

#[test]
fn conversations_round_trip_through_export_and_import() {
    let (dir, mut s) = store();
    let a = s.create_conversation("first").unwrap();
    let b = s.create_conversation("second").unwrap();
    s.append(a, &ChatMessage::user("hello")).unwrap();
    s.append(a, &ChatMessage::assistant("hi, how can I help?"))
        .unwrap();
    s.append(b, &ChatMessage::system("be brief")).unwrap();
    assert_eq!(
        s.messages(a).unwrap(),
        vec![
            ChatMessage::user("hello"),
            ChatMessage::assistant("hi, how can I help?")
        ]
    );
    let list = s.conversations().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0].title.as_str(), list[0].messages), ("first", 2));

    // One conversation, then all, into a fresh database.
    let one = serde_json::to_string(&s.export(Some(a)).unwrap()).unwrap();
    let all = serde_json::to_string(&s.export(None).unwrap()).unwrap();
    let mut t = Store::open(&dir.path().join("other.db")).unwrap();
    let ids = t.import_json(&one).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(t.messages(ids[0]).unwrap(), s.messages(a).unwrap());
    let ids = t.import_json(&all).unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        t.messages(ids[1]).unwrap(),
        vec![ChatMessage::system("be brief")]
    );
    assert_eq!(t.conversations().unwrap().len(), 3);

    // Deleting takes the messages with it.
    s.delete_conversation(a).unwrap();
    assert!(matches!(s.messages(a), Err(Error::UnknownConversation(id)) if id == a));
}

#[test]
fn unknown_conversations_and_bad_imports_are_clear_errors() {
    let (_dir, mut s) = store();
    let e = s.append(42, &ChatMessage::user("x")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no conversation 42 (`enigma memory list` shows them)"
    );
    assert!(matches!(
        s.delete_conversation(7),
        Err(Error::UnknownConversation(7))
    ));
    assert!(matches!(
        s.export(Some(7)),
        Err(Error::UnknownConversation(7))
    ));
    let e = s.import_json("{\"format\": \"something\"}").unwrap_err();
    assert!(
        e.to_string().starts_with("not an Enigma memory export"),
        "{e}"
    );
    let bad_role = r#"{"format":"enigma-memory","version":1,"conversations":[{"id":1,"title":"t","created_at":0,"updated_at":0,"messages":[{"role":"robot","content":"x","created_at":0}]}]}"#;
    assert!(s.import_json(bad_role).is_err());
    let newer = r#"{"format":"enigma-memory","version":9,"conversations":[]}"#;
    assert!(s
        .import_json(newer)
        .unwrap_err()
        .to_string()
        .contains("version 9"));
    // Nothing of a refused import was written.
    assert!(s.conversations().unwrap().is_empty());
}

#[test]
fn a_model_keeps_one_dimension_and_models_are_never_mixed() {
    let (_dir, mut s) = store();
    let small = HashEmbeddings::new("small", 8);
    let v = small.vector("cats and dogs");
    s.add_passages("small", &[("cats and dogs", "note", &v)])
        .unwrap();
    let wide = vec![0.5f32; 16];
    let e = s
        .add_passages("small", &[("wide", "note", &wide)])
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "vector of dimension 16 refused: the index of embedding model \"small\" holds vectors of dimension 8"
    );
    // A query of the wrong width is refused the same way.
    assert!(matches!(
        s.search("small", &wide, 3),
        Err(Error::DimensionMismatch {
            expected: 8,
            got: 16,
            ..
        })
    ));
    // Another model is another index; a search by a model with nothing stored says what there is.
    s.add_passages("wide", &[("wide", "note", &wide)]).unwrap();
    let e = s.search("third", &wide, 3).unwrap_err();
    assert!(
        e.to_string()
            .contains("nothing in memory is embedded with model \"third\"")
            && e.to_string().contains("\"small\" (8 wide, 1 passages)"),
        "{e}"
    );
    // Zero and non-finite vectors have no direction.
    assert!(s.add_passages("small", &[("z", "n", &[0.0; 8])]).is_err());
    assert!(s
        .add_passages("small", &[("z", "n", &[f32::NAN; 8])])
        .is_err());
    assert_eq!(s.search("wide", &wide, 3).unwrap()[0].text, "wide");
}

/// A small labelled set: each question must find its passage first.
#[test]
fn retrieval_finds_the_labelled_passage() {
    let (_dir, mut s) = store();
    let e = HashEmbeddings::new("hash", 256);
    let passages = [
        "The cat sleeps on the warm windowsill every afternoon.",
        "Invoices are due on the first Monday of each month.",
        "The garden hose leaks near the tap; replace the washer.",
        "Maria's birthday party is on the twelfth of June.",
        "The router password is written under the modem.",
        "Bake the bread at two hundred degrees for forty minutes.",
        "The train to Lyon leaves from platform nine at seven.",
        "Water the tomato plants twice a week in summer.",
    ];
    let questions = [
        ("where does the cat sleep in the afternoon", 0),
        ("when are invoices due", 1),
        ("the hose leaks, what washer", 2),
        ("when is Maria's birthday party", 3),
        ("where is the router password", 4),
        ("how long to bake bread", 5),
        ("which platform for the train to Lyon", 6),
        ("how often to water tomato plants", 7),
    ];
    let vectors = e.embed(&passages).unwrap().vectors;
    let items: Vec<(&str, &str, &[f32])> = passages
        .iter()
        .zip(&vectors)
        .map(|(p, v)| (*p, "note", v.as_slice()))
        .collect();
    let ids = s.add_passages("hash", &items).unwrap();
    for (q, want) in questions {
        let found = s.search("hash", &e.vector(q), 3).unwrap();
        assert_eq!(found[0].id, ids[want], "{q:?} found {:?}", found[0].text);
        assert!(found[0].score > found[1].score);
    }
}

fn random_unit(rng: &mut XorShift, dim: usize) -> Vec<f32> {
    let v = rng.fill(dim, -1.0, 1.0);
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[test]
fn the_graph_is_saved_reused_and_rebuilt_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    let mut rng = XorShift::new(5);
    let vectors: Vec<Vec<f32>> = (0..300).map(|_| random_unit(&mut rng, 32)).collect();
    let items: Vec<(&str, &str, &[f32])> = vectors
        .iter()
        .map(|v| ("p", "note", v.as_slice()))
        .collect();
    let query = random_unit(&mut rng, 32);
    let ids;
    {
        let mut s = Store::open(&path).unwrap();
        s.set_exact_limit(100);
        ids = s.add_passages("m", &items).unwrap();
    }
    let mut s = Store::open(&path).unwrap();
    s.set_exact_limit(100);
    let first = s.search("m", &query, 5).unwrap();
    assert_eq!(s.graph_note, None, "the saved graph should have been used");
    // Exact answer, for comparison: a store that never uses the graph.
    let mut exact = Store::open(&path).unwrap();
    let want = exact.search("m", &query, 1).unwrap();
    assert_eq!(first[0].id, want[0].id);
    drop((s, exact));

    // A flipped byte in the saved graph: noticed, rebuilt, and the answers still right.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE graphs SET data = CAST(substr(data, 1, 40) || X'FF' || substr(data, 42) AS BLOB)",
        [],
    )
    .unwrap();
    drop(conn);
    let mut s = Store::open(&path).unwrap();
    s.set_exact_limit(100);
    assert_eq!(s.search("m", &query, 1).unwrap()[0].id, want[0].id);
    let note = s.graph_note.clone().unwrap();
    assert!(note.contains("unusable (checksum mismatch)"), "{note}");

    // Forgetting passages drops the graph; the next load rebuilds it over what is left.
    s.forget_passages(&ids[..10]).unwrap();
    assert!(matches!(
        s.forget_passages(&[ids[0]]),
        Err(Error::UnknownEntry(_))
    ));
    drop(s);
    let mut s = Store::open(&path).unwrap();
    s.set_exact_limit(100);
    s.search("m", &query, 1).unwrap();
    assert!(s.graph_note.clone().unwrap().contains("no saved graph"));
    assert_eq!(s.passages().unwrap().len(), 290);
    assert_eq!(s.prune(200).unwrap(), 90);
    assert_eq!(s.passages().unwrap()[0].id, ids[100]);
}

#[test]
fn a_corrupt_or_foreign_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let e = Store::open(&garbage).err().unwrap();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("the memory database is corrupt or not a database"),
        "{e}"
    );

    // A real database whose pages were overwritten after its header.
    let damaged = dir.path().join("damaged.db");
    {
        let mut s = Store::open(&damaged).unwrap();
        let c = s.create_conversation("x").unwrap();
        for i in 0..200 {
            s.append(
                c,
                &ChatMessage::user(format!("message {i} {}", "x".repeat(200))),
            )
            .unwrap();
        }
    }
    // Fold the WAL into the file first, so the damage is what SQLite reads.
    rusqlite::Connection::open(&damaged)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    for b in &mut bytes[4096..] {
        *b ^= 0xA5;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    let outcome = Store::open(&damaged).and_then(|s| {
        s.check()?;
        s.conversations()
    });
    let e = outcome.expect_err("a damaged database must not read as fine");
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");

    // Someone else's SQLite database is refused, not written into.
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t(x);")
        .unwrap();
    let e = Store::open(&foreign).err().unwrap();
    assert!(matches!(e, Error::Foreign { .. }), "{e}");

    // A database from a newer build.
    let newer = dir.path().join("newer.db");
    drop(Store::open(&newer).unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let e = Store::open(&newer).err().unwrap();
    assert!(e.to_string().contains("schema version 99"), "{e}");
}
