//! The SQLite outbox's and inbox's own tests, on temporary database files.

#![allow(clippy::unwrap_used)]

use super::*;

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "shoal-outbox-{name}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("service.db")
}

#[test]
fn only_committed_messages_are_pending_in_order_with_their_ids() {
    let path = temp_db("commit");
    let outbox = SqliteOutbox::open(&path).unwrap();
    let mut conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .unwrap();
    let mut committed = Vec::new();
    for i in 0..6 {
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO orders (id) VALUES (?1)", [i])
            .unwrap();
        let msg = Message::event("order.created", format!("order {i}"));
        outbox.enqueue(&tx, &Destination::Publish, &msg).unwrap();
        if i % 2 == 0 {
            tx.commit().unwrap();
            committed.push(msg.id());
        } // odd ones roll back when dropped
    }
    let pending = outbox.pending(0, 100).unwrap();
    let ids: Vec<MessageId> = pending.iter().map(|r| r.message.id()).collect();
    assert_eq!(ids, committed);
    assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(outbox.stats().unwrap().pending, 3);

    outbox.delivered(&[pending[0].seq]).unwrap();
    outbox.dead(pending[1].seq, "no subscriber").unwrap();
    let left = outbox.pending(0, 100).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message.id(), committed[2]);
    let stats = outbox.stats().unwrap();
    assert_eq!((stats.pending, stats.dead), (1, 1));
    // Reopening finds the same rows: nothing lives only in memory.
    drop(outbox);
    let again = SqliteOutbox::open(&path).unwrap();
    assert_eq!(again.pending(0, 100).unwrap()[0].message.id(), committed[2]);
}

#[test]
fn the_inbox_remembers_handled_ids_across_reopening() {
    let path = temp_db("inbox");
    let mut conn = Connection::open(&path).unwrap();
    let outbox = SqliteOutbox::open(&path).unwrap();
    let id = Message::command("x", "").id();
    let tx = conn.transaction().unwrap();
    assert!(SqliteOutbox::first_delivery(&tx, id).unwrap());
    assert!(!SqliteOutbox::first_delivery(&tx, id).unwrap());
    tx.commit().unwrap();
    drop(conn);
    let mut conn = Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    assert!(
        !SqliteOutbox::first_delivery(&tx, id).unwrap(),
        "still known after reopening"
    );
    drop(tx);
    assert_eq!(outbox.prune_inbox(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(outbox.prune_inbox(Duration::ZERO).unwrap(), 1);
}

fn enqueue_one(outbox: &SqliteOutbox, conn: &mut Connection) -> Result<Message, OutboxError> {
    let tx = conn.transaction().unwrap();
    let msg = Message::command("bill", "x");
    outbox.enqueue(&tx, &Destination::Service("billing".into()), &msg)?;
    outbox.commit(tx)?;
    Ok(msg)
}

#[test]
fn a_full_outbox_refuses_more_and_accepts_again_once_rows_leave() {
    let path = temp_db("full");
    let outbox = SqliteOutbox::open_with(&path, OutboxOptions::default().max_pending(3)).unwrap();
    let mut conn = outbox.connect().unwrap();
    for _ in 0..3 {
        enqueue_one(&outbox, &mut conn).unwrap();
    }
    let err = enqueue_one(&outbox, &mut conn).unwrap_err();
    assert!(
        matches!(
            err,
            OutboxError::Full {
                pending: 3,
                limit: 3
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("outbox full"), "{err}");
    let first = outbox.pending(0, 10).unwrap()[0].seq;
    outbox.delivered(&[first]).unwrap();
    enqueue_one(&outbox, &mut conn).unwrap();
    // Dead rows do not count against the limit; the count survives reopening.
    let second = outbox.pending(0, 10).unwrap()[0].seq;
    outbox.dead(second, "gave up").unwrap();
    drop(outbox);
    let outbox = SqliteOutbox::open_with(&path, OutboxOptions::default().max_pending(3)).unwrap();
    assert_eq!(outbox.stats().unwrap().pending, 2);
    enqueue_one(&outbox, &mut conn).unwrap();
    assert_eq!(outbox.stats().unwrap().pending, 3);
}

#[test]
fn an_unreadable_row_is_marked_dead_with_its_reason_and_the_others_go_on() {
    let path = temp_db("damaged");
    let outbox = SqliteOutbox::open(&path).unwrap();
    let mut conn = outbox.connect().unwrap();
    let a = enqueue_one(&outbox, &mut conn).unwrap();
    let b = enqueue_one(&outbox, &mut conn).unwrap();
    let c = enqueue_one(&outbox, &mut conn).unwrap();
    conn.execute(
        "UPDATE shoal_outbox SET frame = x'00000005ffffffffff' WHERE message_id = ?1",
        [b.id().as_u128().to_be_bytes()],
    )
    .unwrap();
    let ids: Vec<MessageId> = outbox
        .pending(0, 10)
        .unwrap()
        .iter()
        .map(|r| r.message.id())
        .collect();
    assert_eq!(ids, [a.id(), c.id()]);
    let dead = outbox.dead_rows(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, b.id());
    assert!(dead[0].reason.contains("unreadable"), "{}", dead[0].reason);
    let stats = outbox.stats().unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 1));
    assert!(stats.oldest_pending.is_some());
}

#[test]
fn dead_rows_can_be_requeued_and_are_pruned_after_their_retention() {
    let path = temp_db("dead");
    let outbox = SqliteOutbox::open_with(
        &path,
        OutboxOptions::default().keep_dead_for(Duration::from_secs(3600)),
    )
    .unwrap();
    let mut conn = outbox.connect().unwrap();
    let msg = enqueue_one(&outbox, &mut conn).unwrap();
    let seq = outbox.pending(0, 10).unwrap()[0].seq;
    outbox.dead(seq, "no instance").unwrap();
    assert!(outbox.pending(0, 10).unwrap().is_empty());
    assert_eq!(outbox.prune_dead().unwrap(), 0, "within retention");
    assert_eq!(outbox.requeue_dead().unwrap(), 1);
    let again = outbox.pending(0, 10).unwrap();
    assert_eq!((again[0].seq, again[0].message.id()), (seq, msg.id()));
    outbox.dead(seq, "no instance").unwrap();
    conn.execute("UPDATE shoal_outbox SET dead_ms = 0", [])
        .unwrap();
    assert_eq!(outbox.prune_dead().unwrap(), 1);
    assert_eq!(outbox.stats().unwrap(), OutboxStats::default());
}

#[test]
fn a_database_locked_by_another_process_is_a_clear_error_and_loses_nothing() {
    let path = temp_db("locked");
    let outbox = SqliteOutbox::open(&path).unwrap();
    let mut conn = outbox.connect().unwrap();
    let msg = enqueue_one(&outbox, &mut conn).unwrap();
    drop(outbox);
    // Another writer holds an exclusive lock (as a long migration would).
    let mut holder = Connection::open(&path).unwrap();
    let exclusive = holder
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    let quick = OutboxOptions::default().busy_timeout(Duration::from_millis(100));
    let err = SqliteOutbox::open_with(&path, quick)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service.db") && err.contains("locked"),
        "{err}"
    );
    exclusive.rollback().unwrap();
    let outbox = SqliteOutbox::open_with(&path, quick).unwrap();
    assert_eq!(outbox.pending(0, 10).unwrap()[0].message.id(), msg.id());
}

#[test]
fn a_file_that_is_not_a_database_is_refused_by_name() {
    let path = temp_db("corrupt");
    std::fs::write(&path, b"this is not a sqlite database, just text").unwrap();
    let err = SqliteOutbox::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("service.db") && err.contains("not a database"),
        "{err}"
    );
}
