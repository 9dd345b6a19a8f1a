//! Read events on their way into the audit trail.
//!
//! Every read is audited before its value is returned, and the event must survive
//! the process being killed right after. Writing it through the journal costs a
//! storage write per read (three memtable inserts and a WAL `write`): more than the
//! read itself. Instead a read appends its events to a staging file: a copy into
//! the file's pages through a shared map where the filesystem allows, else one
//! positional `write` (see [`Mapped`]). Either way they are in the page cache once
//! the read returns, so a killed process loses nothing. The journal's next group
//! takes everything staged first, so the trail keeps the order things happened in:
//! any audited write makes one, the worker makes one every 100 ms (and syncs), and
//! so does anything that reads the trail (a subject's history only when a staged
//! event is about the subject). A machine crash can lose the last 100 ms of read
//! events, as it could lose them from an unsynced WAL before.
//!
//! Two files take turns: appends go to one while the other's events are being
//! committed, and a file is rewritten from its start only once everything in it is
//! in the trail. Entries carry a staging sequence number and a MAC; the trail records
//! the last number it took (`audit/staged`, in the same batch as the events,
//! authenticated and named by the checkpoint), so at open the entries after it are
//! committed and none twice. Numbers only grow within a file (those of a failed
//! append are skipped); a torn last entry (the process killed during the append,
//! before the read returned) and whatever an earlier turn left after the last entry
//! fail their MAC or have a lower number, and end the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode_into};
use crate::crypto::{Key, domain};
use crate::error::Error;
use crate::events::{AuditAction, AuditEvent, AuditOutcome, ReadEvent};
use crate::mapped::Mapped;

const FILES: [&str; 2] = ["AUDIT-STAGED-0", "AUDIT-STAGED-1"];
pub(crate) const EVENT_FORMAT: u8 = 1;
/// A file this full is committed by the appender itself, not left for the worker.
const FLUSH_AT: u64 = 4 << 20;
/// How much of each file is mapped: the appends up to `FLUSH_AT`, and the one that
/// goes past it and commits the file (or those that find it full while commits
/// fail, and refuse reads). Entries past it (a large batch's, begun near
/// `FLUSH_AT`) are written with `pwrite`.
const MAPPED: usize = (FLUSH_AT + (1 << 20)) as usize;
/// No event encodes to more (actor and purpose names are bounded far below).
const MAX_ENTRY: usize = 64 << 10;
pub(crate) const HEADER: usize = 4 + 8;
const MAC: usize = 32;

/// One staging sequence number and its event.
pub(crate) type Staged = (u64, AuditEvent);

/// A buffer this big (a large batch's entries) is not kept for the next append.
const KEPT_BUFFER: usize = 64 << 10;

/// A staged read event, with its staging number; its names are numbers in
/// `State::names`.
#[derive(Debug, Clone, Copy)]
struct Fresh {
    seq: u64,
    at: u64,
    actor: usize,
    action: AuditAction,
    purpose: Option<usize>,
    outcome: AuditOutcome,
    records: u64,
    subject: Option<[u8; 16]>,
}

impl Fresh {
    fn of(seq: u64, event: &ReadEvent<'_>, names: &mut HashMap<String, usize>) -> Fresh {
        let mut number = |name: &str| match names.get(name) {
            Some(&n) => n,
            None => {
                let n = names.len();
                names.insert(name.to_owned(), n);
                n
            }
        };
        Fresh {
            seq,
            at: event.at,
            actor: number(event.actor),
            action: event.action,
            purpose: event.purpose.map(&mut number),
            outcome: event.outcome,
            records: event.records,
            subject: event.subject,
        }
    }

    /// The event, with `names` in number order.
    fn event(&self, names: &[String]) -> AuditEvent {
        ReadEvent {
            seq: 0,
            at: self.at,
            actor: &names[self.actor],
            action: self.action,
            purpose: self.purpose.map(|n| names[n].as_str()),
            outcome: self.outcome,
            records: self.records,
            subject: self.subject,
        }
        .to_event()
    }
}

pub(crate) struct Staging {
    state: Mutex<State>,
}

struct State {
    /// The two files, written only under the lock.
    files: [Mapped; 2],
    active: usize,
    offset: u64,
    next: u64,
    /// Staged and not yet taken by the journal, in order, ahead of `fresh`: those
    /// left by a killed process, and a failed commit's events, which come back.
    pending: Vec<Staged>,
    /// The events staged since the journal last took them, in order, naming their
    /// actor and purpose by number: a read stages its event without allocating
    /// (the journal's leader makes the events when it takes them).
    fresh: Vec<Fresh>,
    /// The names the events in `fresh` use, numbered.
    names: HashMap<String, usize>,
    /// The entries of an append, before they are written: kept between appends.
    buf: Vec<u8>,
    /// The other file still holds events not yet in the trail: it is not reused.
    other_busy: bool,
    /// A leader took events and has not said yet whether it committed them.
    in_flight: bool,
    /// The subjects of the events taken by that leader.
    in_flight_about: Vec<[u8; 16]>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn entry_mac(key: &Key, seq: u64, body: &[u8]) -> [u8; 32] {
    key.mac_parts(&[domain::AUDIT_STAGED, &seq.to_le_bytes(), body])
}

/// Appends the staging entry of `event` (an [`AuditEvent`] or what encodes as one)
/// numbered `seq` to `out`.
fn put_entry(out: &mut Vec<u8>, key: &Key, seq: u64, event: &impl Serialize) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    encode_into(EVENT_FORMAT, event, out);
    let body = at + HEADER;
    let len = (out.len() - body) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    let mac = entry_mac(key, seq, &out[body..]);
    out.extend_from_slice(&mac);
}

/// The entries of one file, from its start to the first that is torn, altered, or
/// not numbered above the one before.
pub(crate) fn read_entries(bytes: &[u8], key: &Key) -> Vec<Staged> {
    let mut out: Vec<Staged> = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let seq = u64::from_le_bytes(head[4..].try_into().expect("8 bytes"));
        // Numbers only grow within a turn (a failed append's are skipped); an entry
        // left by an earlier turn has a lower one.
        if len > MAX_ENTRY || out.last().is_some_and(|&(prev, _)| seq <= prev) {
            break;
        }
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        let Some(mac) = bytes.get(at + HEADER + len..at + HEADER + len + MAC) else {
            break;
        };
        if !bool::from(entry_mac(key, seq, body)[..].ct_eq(mac)) {
            break;
        }
        let Ok(event) = decode::<AuditEvent>(EVENT_FORMAT, body) else {
            break;
        };
        out.push((seq, event));
        at += HEADER + len + MAC;
    }
    out
}

impl Staging {
    /// Opens (creating) the two files. Entries in them that the trail has not taken
    /// (a killed process's) are pending, and go first into the next commit.
    /// `done` is the last staging number the trail took (from its authenticated mark).
    pub(crate) fn open(dir: &Path, done: u64, key: &Key) -> Result<Staging, Error> {
        let open = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| Error::io(&path, e))
        };
        let files = [open(FILES[0])?, open(FILES[1])?];
        let mut left: Vec<Staged> = Vec::new();
        let mut last = done;
        for (file, name) in files.iter().zip(FILES) {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &*file, &mut bytes)
                .map_err(|e| Error::io(dir.join(name), e))?;
            for (seq, event) in read_entries(&bytes, key) {
                last = last.max(seq);
                if seq > done {
                    left.push((seq, event));
                }
            }
        }
        left.sort_by_key(|(seq, _)| *seq);
        left.dedup_by_key(|(seq, _)| *seq);
        let [first, second] = files;
        let map = |file: File, name: &str| {
            Mapped::open(file, MAPPED).map_err(|e| Error::io(dir.join(name), e))
        };
        let files = [map(first, FILES[0])?, map(second, FILES[1])?];
        Ok(Staging {
            state: Mutex::new(State {
                files,
                // Appends start over in the first file only once the left entries
                // are committed (reads wait for that: the vault commits them at
                // open, or refuses reads when the trail is damaged).
                active: 0,
                offset: 0,
                // Entries are MAC'd: no number comes near the end of the range.
                next: last.saturating_add(1),
                other_busy: !left.is_empty(),
                pending: left,
                fresh: Vec::new(),
                names: HashMap::new(),
                buf: Vec::new(),
                in_flight: false,
                in_flight_about: Vec::new(),
            }),
        })
    }

    /// Whether every event staged so far is in the trail (not merely taken by a
    /// leader whose commit is under way).
    pub(crate) fn settled(&self) -> bool {
        let st = lock(&self.state);
        st.pending.is_empty() && st.fresh.is_empty() && !st.in_flight
    }

    /// Whether an event about `subject` (an audit reference) is staged and not yet
    /// known to be in the trail: pending, or taken by a leader that has not said
    /// whether it committed it. A reader of the subject's events commits the staged
    /// ones first only then; events staged after this answer are later than the read.
    pub(crate) fn holds_about(&self, subject: &[u8; 16]) -> bool {
        let st = lock(&self.state);
        st.in_flight_about.contains(subject)
            || st.fresh.iter().any(|f| f.subject.as_ref() == Some(subject))
            || st
                .pending
                .iter()
                .any(|(_, e)| e.subject.as_ref() == Some(subject))
    }

    /// Whether the active file is full: a commit that keeps failing must not let the
    /// staged events (never synced) pile up.
    pub(crate) fn backlogged(&self) -> bool {
        lock(&self.state).offset >= FLUSH_AT
    }

    /// Whether the active file is half full: the worker, which commits every 100 ms,
    /// has fallen behind, and a read may soon have to commit (and wait) itself.
    pub(crate) fn filling(&self) -> bool {
        lock(&self.state).offset >= FLUSH_AT / 2
    }

    /// Appends `events`, numbered and dated `at`, to the active file (one copy or
    /// `write`); true when the file is full enough to be committed now.
    pub(crate) fn append(
        &self,
        key: &Key,
        at: u64,
        events: &[ReadEvent<'_>],
    ) -> Result<bool, Error> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.buf.clear();
        for (i, event) in events.iter().enumerate() {
            put_entry(&mut st.buf, key, st.next + i as u64, &event.at(at));
        }
        let first = st.next;
        st.next += events.len() as u64;
        let active = st.active;
        if let Err(e) = st.files[active].write_at(&st.buf, st.offset) {
            // Some entries may have been written. Their numbers are not used again:
            // the next append overwrites them, and any left after its end have lower
            // numbers and end the file. (The read fails; if the process is killed
            // before that, a whole entry written may be committed at open: the trail
            // then records a read attempted, not one answered.)
            return Err(Error::io(Path::new(FILES[st.active]), e));
        }
        st.offset += st.buf.len() as u64;
        if st.buf.capacity() > KEPT_BUFFER {
            st.buf = Vec::new();
        }
        for (seq, event) in (first..).zip(events) {
            let fresh = Fresh::of(seq, &event.at(at), &mut st.names);
            st.fresh.push(fresh);
        }
        Ok(st.offset >= FLUSH_AT)
    }

    /// Takes what is staged, for the journal to commit ahead of its group; appends go
    /// on in the other file, from its start, when everything in that one is
    /// committed. Only the journal's leader calls this, and then
    /// [`done`](Self::done), so one commit of staged events runs at a time.
    pub(crate) fn take(&self) -> Vec<Staged> {
        let (mut taken, fresh, names) = {
            let mut st = lock(&self.state);
            let taken = std::mem::take(&mut st.pending);
            let fresh = std::mem::take(&mut st.fresh);
            let names = std::mem::take(&mut st.names);
            st.in_flight = !taken.is_empty() || !fresh.is_empty();
            st.in_flight_about = taken
                .iter()
                .filter_map(|(_, e)| e.subject)
                .chain(fresh.iter().filter_map(|f| f.subject))
                .collect();
            if !st.other_busy && st.in_flight {
                st.active ^= 1;
                st.offset = 0;
                st.other_busy = true;
            }
            (taken, fresh, names)
        };
        // Made outside the lock: reads go on staging meanwhile.
        let mut by_number = vec![String::new(); names.len()];
        for (name, n) in names {
            by_number[n] = name;
        }
        taken.extend(fresh.iter().map(|f| (f.seq, f.event(&by_number))));
        taken
    }

    /// Empties the file not in use when everything in it is in the trail, so that no
    /// copy of committed events outlives them for long (the worker calls this once a
    /// minute: emptying at every turn would make each append grow the file, and
    /// growing a file waits for the filesystem journal, which a WAL sync holds).
    pub(crate) fn trim(&self) {
        let mut st = lock(&self.state);
        if !st.other_busy {
            let other = st.active ^ 1;
            let _ = st.files[other].truncate();
        }
    }

    /// After the commit of `taken`: on success both files hold only committed entries
    /// (the active one may go on after them: they end at the first new entry); on
    /// failure the events are pending again, first.
    pub(crate) fn done(&self, taken: Vec<Staged>, committed: bool) {
        let mut st = lock(&self.state);
        st.in_flight = false;
        st.in_flight_about.clear();
        if committed {
            st.other_busy = false;
        } else {
            let later = std::mem::replace(&mut st.pending, taken);
            st.pending.extend(later);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::events::{AuditAction, AuditOutcome};

    fn key() -> Key {
        Key::fill_with(|k| *k = [7; 32])
    }

    /// Staging files in a new directory (kept until the value is dropped).
    fn new_staging() -> Result<(Key, tempfile::TempDir, Staging), Error> {
        let key = key();
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let staging = Staging::open(dir.path(), 0, &key)?;
        Ok((key, dir, staging))
    }

    fn event(n: u64) -> ReadEvent<'static> {
        ReadEvent::new("reader", AuditAction::Detokenize, AuditOutcome::Ok).about(None, n)
    }

    #[test]
    fn settled_only_when_nothing_is_pending_or_being_committed() -> Result<(), Error> {
        let (key, _dir, staging) = new_staging()?;
        assert!(staging.settled());
        staging.append(&key, 1, &[event(1), event(2)])?;
        assert!(!staging.settled());
        // Taken by a leader whose commit is under way: not settled.
        let taken = staging.take();
        assert_eq!(taken.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        assert!(!staging.settled());
        staging.append(&key, 1, &[event(3)])?;
        // The commit failed: its events come back first, before the later one.
        staging.done(taken, false);
        assert!(!staging.settled());
        let again = staging.take();
        assert_eq!(again.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2, 3]);
        staging.done(again, true);
        assert!(staging.settled());
        Ok(())
    }

    #[test]
    fn holds_about_a_subject_until_its_events_are_committed() -> Result<(), Error> {
        let (key, _dir, staging) = new_staging()?;
        let about = |subject: u8| event(1).about(Some([subject; 16]), 1);
        let (erin, frank) = (&[1; 16], &[2; 16]);
        staging.append(&key, 1, &[event(1), about(1)])?;
        assert!(staging.holds_about(erin));
        assert!(!staging.holds_about(frank));
        // Taken by a leader: still held until it says the commit went through.
        let taken = staging.take();
        staging.append(&key, 1, &[about(2)])?;
        assert!(staging.holds_about(erin) && staging.holds_about(frank));
        // Failed: pending again.
        staging.done(taken, false);
        assert!(staging.holds_about(erin));
        let taken = staging.take();
        staging.done(taken, true);
        assert!(!staging.holds_about(erin) && !staging.holds_about(frank));
        Ok(())
    }

    #[test]
    fn staged_events_are_taken_and_read_back_as_they_were_staged() -> Result<(), Error> {
        let (key, dir, staging) = new_staging()?;
        let a = ReadEvent::new("desk", AuditAction::Detokenize, AuditOutcome::Ok)
            .purpose("support")
            .about(Some([4; 16]), 1);
        let b = ReadEvent::new("mailer", AuditAction::Export, AuditOutcome::Erased);
        staging.append(&key, 7, &[a, b])?;
        staging.append(&key, 8, &[a])?;
        let expected = vec![
            (1, a.at(7).to_event()),
            (2, b.at(7).to_event()),
            (3, a.at(8).to_event()),
        ];
        assert_eq!(staging.take(), expected);
        // The files hold the same entries, for the recovery of a killed process.
        assert_eq!(Staging::open(dir.path(), 0, &key)?.take(), expected);
        Ok(())
    }

    #[test]
    fn a_trimmed_file_is_emptied_then_written_again_from_its_start() -> Result<(), Error> {
        let (key, dir, staging) = new_staging()?;
        let len = |n: usize| -> Result<u64, Error> {
            let path = dir.path().join(FILES[n]);
            Ok(std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len())
        };
        staging.append(&key, 1, &[event(1), event(2)])?;
        // Taken: appends go on in the second file.
        let taken = staging.take();
        staging.append(&key, 2, &[event(3)])?;
        // Not yet committed: the first file is kept.
        staging.trim();
        assert!(len(0)? > 0);
        staging.done(taken, true);
        staging.trim();
        assert_eq!(len(0)?, 0);
        // The next turn writes the first file again, from its start.
        let taken = staging.take();
        assert_eq!(taken.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3]);
        staging.done(taken, true);
        staging.append(&key, 3, &[event(4)])?;
        assert!(len(0)? > 0);
        // What a killed process would leave: the second file's entry (committed, so
        // skipped by a reopen that knows its mark) and the first's new one.
        assert_eq!(
            Staging::open(dir.path(), 3, &key)?.take(),
            vec![(4, event(4).at(3).to_event())]
        );
        assert_eq!(
            Staging::open(dir.path(), 0, &key)?
                .take()
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        Ok(())
    }

    #[test]
    fn names_are_numbered_per_turn_and_come_back_right() -> Result<(), Error> {
        let (key, _dir, staging) = new_staging()?;
        let desk =
            ReadEvent::new("desk", AuditAction::Detokenize, AuditOutcome::Ok).purpose("support");
        let mailer =
            ReadEvent::new("mailer", AuditAction::Export, AuditOutcome::Ok).purpose("newsletter");
        staging.append(&key, 1, &[desk, mailer])?;
        let first = staging.take();
        // The next turn numbers its names afresh: "mailer" comes first now.
        staging.append(&key, 2, &[mailer, desk])?;
        // The first turn's commit failed: its events come back ahead of the second's.
        staging.done(first, false);
        let names: Vec<_> = staging
            .take()
            .into_iter()
            .map(|(seq, e)| (seq, e.actor, e.purpose, e.at))
            .collect();
        let named = |seq, actor: &str, purpose: &str, at| {
            (seq, actor.to_owned(), Some(purpose.to_owned()), at)
        };
        assert_eq!(
            names,
            [
                named(1, "desk", "support", 1),
                named(2, "mailer", "newsletter", 1),
                named(3, "mailer", "newsletter", 2),
                named(4, "desk", "support", 2),
            ]
        );
        Ok(())
    }

    #[test]
    fn a_read_event_encodes_as_the_audit_event_it_stands_for() {
        let plain = event(3).at(1_700_000_000_000);
        let full = ReadEvent::new(
            "support-desk",
            AuditAction::ConsentsRead,
            AuditOutcome::Erased,
        )
        .purpose("support")
        .about(Some([9; 16]), 2)
        .at(u64::MAX);
        for read in [plain, full] {
            let bytes = encode(EVENT_FORMAT, &read);
            assert_eq!(bytes, encode(EVENT_FORMAT, &read.to_event()));
            assert_eq!(
                decode::<AuditEvent>(EVENT_FORMAT, &bytes).ok(),
                Some(read.to_event())
            );
        }
    }

    #[test]
    fn entries_read_back_until_a_torn_altered_or_stale_one() {
        let key = key();
        let mut file = Vec::new();
        for seq in 5..8 {
            put_entry(&mut file, &key, seq, &event(seq));
        }
        let whole = read_entries(&file, &key);
        assert_eq!(whole.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(whole[2].1, event(7).to_event());

        // Torn: the last entry cut short.
        assert_eq!(read_entries(&file[..file.len() - 1], &key).len(), 2);
        // Altered: a byte of the second entry's body.
        let mut altered = file.clone();
        let second = HEADER + (file.len() / 3 - HEADER - MAC) + MAC + HEADER;
        altered[second] ^= 1;
        assert_eq!(read_entries(&altered, &key).len(), 1);
        // Stale: an entry of an earlier turn after the last one written.
        let mut stale = Vec::new();
        put_entry(&mut stale, &key, 20, &event(20));
        put_entry(&mut stale, &key, 3, &event(3));
        assert_eq!(read_entries(&stale, &key).len(), 1);
        // A failed append's numbers are skipped: a gap is not an end.
        let mut gap = Vec::new();
        for seq in [5, 6, 9] {
            put_entry(&mut gap, &key, seq, &event(seq));
        }
        assert_eq!(read_entries(&gap, &key).len(), 3);
        // Another key's entries are not taken.
        assert!(read_entries(&file, &Key::fill_with(|k| *k = [8; 32])).is_empty());
    }
}
