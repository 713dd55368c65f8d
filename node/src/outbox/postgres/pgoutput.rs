//! Reads the two `pgoutput` messages the log tail needs: a relation's columns, and a row
//! inserted into it (binary column values). Everything else in the stream is skipped.
//!
//! Input comes from the database server; a malformed message is an error, never a panic.

use crate::outbox::store::StoredRow;

/// One decoded `pgoutput` message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// A relation's description ('R'), sent before its first change in a session and after
    /// its schema changed.
    Relation(Relation),
    /// A row inserted ('I') into relation `relid`: its column values, `None` for NULL.
    Insert {
        relid: u32,
        values: Vec<Option<Vec<u8>>>,
    },
    /// Anything else (updates, deletes, truncates, types, origins): not the tail's concern.
    Other,
}

/// A relation's identity and column names, in column order.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Relation {
    pub(super) id: u32,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) columns: Vec<String>,
}

/// Decodes one `pgoutput` message (the payload of an `XLogData`).
pub(super) fn parse(data: &[u8]) -> Result<Change, String> {
    let mut r = Reader(data);
    match r.u8()? {
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let _replica_identity = r.u8()?;
            let count = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(count).min(64));
            for _ in 0..count {
                let _flags = r.u8()?;
                columns.push(r.cstr()?);
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Ok(Change::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            }))
        }
        b'I' => {
            let relid = r.u32()?;
            if r.u8()? != b'N' {
                return Err("insert without a new tuple".into());
            }
            let count = r.u16()?;
            let mut values = Vec::with_capacity(usize::from(count).min(64));
            for _ in 0..count {
                values.push(match r.u8()? {
                    b'n' => None,
                    b'b' | b't' => {
                        let len = r.u32()? as usize;
                        Some(r.take(len)?.to_vec())
                    }
                    b'u' => return Err("an inserted row with an unchanged (TOAST) value".into()),
                    other => return Err(format!("unknown column kind {other:#04x}")),
                });
            }
            Ok(Change::Insert { relid, values })
        }
        _ => Ok(Change::Other),
    }
}

/// Where the outbox's columns are in its relation, found by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OutboxColumns {
    seq: usize,
    destination: usize,
    frame: usize,
    created_ms: usize,
    state: usize,
}

impl OutboxColumns {
    /// The outbox's columns in `relation`, or which one is missing.
    pub(super) fn find(relation: &Relation) -> Result<Self, String> {
        let at = |name: &str| {
            relation
                .columns
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| format!("the outbox table has no column `{name}`"))
        };
        Ok(Self {
            seq: at("seq")?,
            destination: at("destination")?,
            frame: at("frame")?,
            created_ms: at("created_ms")?,
            state: at("state")?,
        })
    }

    /// The pending row in an insert's binary values; `Ok(None)` for a row inserted in another
    /// state.
    pub(super) fn row(&self, values: &[Option<Vec<u8>>]) -> Result<Option<StoredRow>, String> {
        let value = |i: usize| -> Result<&[u8], String> {
            values
                .get(i)
                .and_then(|v| v.as_deref())
                .ok_or_else(|| format!("column {i} missing or NULL"))
        };
        let state = i16::from_be_bytes(fixed(value(self.state)?)?);
        if state != 0 {
            return Ok(None);
        }
        Ok(Some(StoredRow {
            seq: i64::from_be_bytes(fixed(value(self.seq)?)?),
            destination: String::from_utf8(value(self.destination)?.to_vec())
                .map_err(|_| "destination is not UTF-8".to_owned())?,
            frame: value(self.frame)?.to_vec(),
            created_ms: i64::from_be_bytes(fixed(value(self.created_ms)?)?),
        }))
    }
}

/// A binary integer column's bytes, checked for length.
fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes.try_into().map_err(|_| {
        format!(
            "expected a {N}-byte binary value, got {} bytes",
            bytes.len()
        )
    })
}

/// A cursor over a message, every read checked for length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated message: {n} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(fixed(self.take(2)?)?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(fixed(self.take(4)?)?))
    }

    fn cstr(&mut self) -> Result<String, String> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or("unterminated string")?;
        let text = String::from_utf8(self.0[..end].to_vec()).map_err(|_| "string not UTF-8")?;
        self.0 = &self.0[end + 1..];
        Ok(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const COLUMNS: [&str; 6] = [
        "seq",
        "message_id",
        "destination",
        "frame",
        "created_ms",
        "state",
    ];

    fn relation_message() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(16_384_u32.to_be_bytes());
        m.extend(b"shoal\0outbox\0");
        m.push(b'd');
        m.extend((COLUMNS.len() as u16).to_be_bytes());
        for name in COLUMNS {
            m.push(0);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(20_u32.to_be_bytes());
            m.extend(u32::MAX.to_be_bytes());
        }
        m
    }

    fn insert_message(state: i16) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend(16_384_u32.to_be_bytes());
        m.push(b'N');
        m.extend(6_u16.to_be_bytes());
        let values: [&[u8]; 6] = [
            &42_i64.to_be_bytes(),
            &[1; 16],
            b"service:billing",
            &[9, 8, 7],
            &1_700_000_000_000_i64.to_be_bytes(),
            &state.to_be_bytes(),
        ];
        for v in values {
            m.push(b'b');
            m.extend((v.len() as u32).to_be_bytes());
            m.extend(v);
        }
        m
    }

    #[test]
    fn an_insert_into_the_outbox_reads_back_as_its_row() {
        let Change::Relation(relation) = parse(&relation_message()).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(
            (relation.namespace.as_str(), relation.name.as_str()),
            ("shoal", "outbox")
        );
        let columns = OutboxColumns::find(&relation).unwrap();
        let Change::Insert { relid, values } = parse(&insert_message(0)).unwrap() else {
            panic!("not an insert");
        };
        assert_eq!(relid, relation.id);
        let row = columns.row(&values).unwrap().unwrap();
        assert_eq!((row.seq, row.created_ms), (42, 1_700_000_000_000));
        assert_eq!(
            (row.destination.as_str(), &row.frame[..]),
            ("service:billing", &[9, 8, 7][..])
        );
        // A row inserted dead is not pending.
        let Change::Insert { values, .. } = parse(&insert_message(2)).unwrap() else {
            panic!("not an insert");
        };
        assert!(columns.row(&values).unwrap().is_none());
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let whole = insert_message(0);
        for cut in 1..whole.len() {
            assert!(parse(&whole[..cut]).is_err(), "cut at {cut}");
        }
        let relation = relation_message();
        for cut in 1..relation.len() {
            assert!(parse(&relation[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(parse(b"Yanything").unwrap(), Change::Other);
        assert!(parse(b"").is_err());
        // A relation without the outbox's columns, and values of the wrong width.
        let missing = Relation {
            id: 1,
            namespace: "s".into(),
            name: "t".into(),
            columns: vec!["seq".into()],
        };
        assert!(
            OutboxColumns::find(&missing)
                .unwrap_err()
                .contains("destination")
        );
        let Change::Relation(relation) = parse(&relation_message()).unwrap() else {
            panic!("not a relation");
        };
        let columns = OutboxColumns::find(&relation).unwrap();
        assert!(columns.row(&[Some(vec![1, 2, 3])]).is_err());
    }
}
