//! What a purge retires: the purges' turn and the subjects whose purge is under way
//! ([`Retirement`]), and the rule the storage engine applies to every stored version
//! it rewrites ([`retire_rule`]). The engine rewrites only the files that hold a purged key
//! range, so the purge writes nothing into those ranges itself: a write there would
//! land in a new file that overlaps every key, and make the compaction rewrite all.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::codec::{decode, encode};
use crate::keys::IndexKeys;
use crate::records::{RECORD_FORMAT, StoredRecord, shredded_tag};
use crate::store::{Cf, RetireRule, Retired};
use crate::subjects::{Sid, SubjectEntry};
use crate::token::{RECORD_GROUP_LEN, RecordGroup, TokenId};

/// The purges' shared state: one purge (or expiry run) at a time, and the subjects
/// the one under way retires, which the store's retirement rule reads.
pub(crate) struct Retirement {
    turn: Mutex<()>,
    doomed: Arc<Doomed>,
}

impl std::fmt::Debug for Retirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Retirement")
    }
}

impl Retirement {
    /// The vault's retirement, and the rule the store applies for it.
    pub(crate) fn new(index: IndexKeys) -> (Retirement, RetireRule) {
        let doomed = Arc::new(Doomed::default());
        let rule = retire_rule(doomed.clone(), index);
        let retirement = Retirement {
            turn: Mutex::new(()),
            doomed,
        };
        (retirement, rule)
    }

    /// Waits until no other purge runs, and holds the turn until dropped.
    pub(crate) fn turn(&self) -> Turn<'_> {
        Turn {
            _turn: self.turn.lock().unwrap_or_else(PoisonError::into_inner),
            doomed: &self.doomed,
        }
    }
}

/// A purge's turn: the only one that may doom subjects.
pub(crate) struct Turn<'a> {
    _turn: MutexGuard<'a, ()>,
    doomed: &'a Doomed,
}

impl Turn<'_> {
    /// Retires these subjects' data until the returned guard is dropped. `groups`
    /// are their records' groups, where known.
    pub(crate) fn doom(
        &self,
        sids: impl IntoIterator<Item = Sid>,
        groups: Vec<Option<RecordGroup>>,
    ) -> DoomedNow<'_> {
        self.doomed.add(sids, groups);
        DoomedNow(self.doomed)
    }
}

/// Subjects doomed for as long as this lives.
pub(crate) struct DoomedNow<'a>(&'a Doomed);

impl Drop for DoomedNow<'_> {
    fn drop(&mut self) {
        self.0.clear();
    }
}

/// The erased subjects whose data a purge is making physical. (No `Debug`: it pairs
/// storage ids with record groups, the link the purge exists to remove.)
#[derive(Default)]
struct Doomed {
    /// Whether `sids` has any: most compactions run with none, and skip the lock.
    any: AtomicBool,
    sids: RwLock<HashSet<Sid>>,
    /// Their records' groups: a record's key starts with its group (in the current
    /// layout), so most records are kept without being decoded. `None`: decode
    /// every record (a subject's group is not known).
    groups: RwLock<Option<HashSet<RecordGroup>>>,
}

impl Doomed {
    fn add(&self, sids: impl IntoIterator<Item = Sid>, groups: Vec<Option<RecordGroup>>) {
        let mut set = self.sids.write().unwrap_or_else(PoisonError::into_inner);
        set.extend(sids);
        let known: Option<HashSet<RecordGroup>> = groups.into_iter().collect();
        *self.groups.write().unwrap_or_else(PoisonError::into_inner) = known;
        self.any.store(!set.is_empty(), Ordering::Release);
    }

    fn clear(&self) {
        let mut set = self.sids.write().unwrap_or_else(PoisonError::into_inner);
        set.clear();
        *self.groups.write().unwrap_or_else(PoisonError::into_inner) = Some(HashSet::new());
        self.any.store(false, Ordering::Release);
    }

    /// Whether `key` is in a doomed subject's record group: `Some(true)` or
    /// `Some(false)`, or `None` where that cannot be told (records scattered, or a
    /// subject's group unknown).
    fn in_group(&self, key: &[u8], grouped: bool) -> Option<bool> {
        if !grouped {
            return None;
        }
        let groups = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        let groups = groups.as_ref()?;
        Some(
            key.get(..RECORD_GROUP_LEN)
                .is_some_and(|g| groups.contains(g)),
        )
    }

    fn holds(&self, sid: &[u8]) -> bool {
        let Ok(sid) = <Sid>::try_from(sid) else {
            return false;
        };
        self.sids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&sid)
    }
}

/// The rule for the subject-data families: a doomed subject's live records become
/// stubs (its tokens still answer *erased*), and its key, subject entry, index
/// entries, expiry entries and consents are removed, in whatever version and file they are found.
/// Everything else is kept, as is anything that does not decode.
fn retire_rule(doomed: Arc<Doomed>, index: IndexKeys) -> RetireRule {
    let grouped = index.tokens.grouped();
    Arc::new(move |cf, key, value| {
        if !doomed.any.load(Ordering::Acquire) {
            return Retired::Keep;
        }
        let doomed_if = |yes: bool| if yes { Retired::Remove } else { Retired::Keep };
        match cf {
            Cf::Keys => doomed_if(doomed.holds(key)),
            Cf::Index | Cf::Consents => doomed_if(key.len() >= 16 && doomed.holds(&key[..16])),
            // expiry time ‖ token id → storage id.
            Cf::Expiry => doomed_if(doomed.holds(value)),
            Cf::Subjects => match SubjectEntry::decode(value) {
                Ok(entry) => doomed_if(doomed.holds(&entry.sid)),
                Err(_) => Retired::Keep,
            },
            // Records outside every doomed group are kept without being decoded.
            Cf::Records if doomed.in_group(key, grouped) == Some(false) => Retired::Keep,
            Cf::Records => match (decode(RECORD_FORMAT, value), TokenId::try_from(key)) {
                (Ok(StoredRecord::Live(record)), Ok(id)) if doomed.holds(&record.sid) => {
                    Retired::Replace(stub(&index, &id))
                }
                // A damaged record in a doomed subject's group is its: shredded too
                // (the purge that listed records by the index stubbed them unread).
                (Err(_), Ok(id)) if doomed.in_group(key, grouped) == Some(true) => {
                    Retired::Replace(stub(&index, &id))
                }
                _ => Retired::Keep,
            },
            _ => Retired::Keep,
        }
    })
}

fn stub(index: &IndexKeys, id: &TokenId) -> Vec<u8> {
    let stub = StoredRecord::Shredded {
        tag: shredded_tag(index, id),
    };
    encode(RECORD_FORMAT, &stub)
}
