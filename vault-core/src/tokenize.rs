//! Tokenization: values in, tokens out. One atomic write per call, with one audit
//! event per subject, committed by the journal; a new subject gets its key in the
//! same write.

use std::collections::{HashMap, HashSet};
use std::sync::{MutexGuard, PoisonError, RwLockReadGuard, TryLockError};

use crate::alias;
use crate::backup::Destroyed;
use crate::codec::{decode, encode};
use crate::crypto::random_bytes;
use crate::durable::Unsynced;
use crate::error::{Argument, Error, InputError, Problem};
use crate::events::{AuditAction, AuditEvent, AuditOutcome};
use crate::inventory::Tally;
use crate::records::{LiveRecord, RECORD_FORMAT, RecordPlace, StoredRecord, index_key};
use crate::retention::expiry_key;
use crate::store::{Batch, Cf, Storage, WriteSet};
use crate::subjects::Stripes;
use crate::subjects::{KnownSubject, SUBJECT_FORMAT, Sid, SubjectHash};
use crate::token::{Token, TokenFormat, TokenId};
use crate::vault::{Inner, Vault};

/// How a tokenization commits.
#[derive(Debug, Clone, Copy)]
enum Commit {
    /// Waits for the locks and the journal; synced as `sync` says.
    Wait { sync: bool },
    /// Unsynced, and only if nobody holds a lock it needs or is writing.
    IfFree,
}

/// A subject a tokenization writes to: its entry as it will be stored and its key,
/// whether this write creates it, and how many records it stores for it.
struct SubjectWrite {
    hash: SubjectHash,
    known: KnownSubject,
    created: bool,
    /// Records written.
    stored: u64,
    /// Deterministic tokens asked for (written or handed out again): such calls
    /// confirm a guessed value, so they are audited as their own action.
    deterministic: u64,
    /// Random tokens written.
    random: u64,
}

/// One value to tokenize, for [`Vault::tokenize_batch`].
#[derive(Clone, Copy)]
pub struct TokenizeRequest<'a> {
    /// The data subject the value belongs to (e.g. a customer id).
    pub subject: &'a str,
    /// The field name, e.g. `email` (ASCII letters, digits, `_`, `-`, `.`).
    pub field: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// Issue the deterministic token of (subject, field, value) instead of a random one.
    pub deterministic: bool,
    /// The shape of the token, for columns that validate what they hold; `None`:
    /// the opaque `tok_…` form.
    pub format: Option<TokenFormat>,
}

impl<'a> TokenizeRequest<'a> {
    /// A request for a random token.
    pub fn new(subject: &'a str, field: &'a str, value: &'a [u8]) -> Self {
        TokenizeRequest {
            subject,
            field,
            value,
            deterministic: false,
            format: None,
        }
    }

    /// Asks for the deterministic token instead.
    pub fn deterministic(mut self) -> Self {
        self.deterministic = true;
        self
    }

    /// Asks for a token of `format` (a deterministic token only as `email`).
    pub fn format(mut self, format: TokenFormat) -> Self {
        self.format = Some(format);
        self
    }
}

impl std::fmt::Debug for TokenizeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizeRequest")
            .field("field", &self.field)
            .field("deterministic", &self.deterministic)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Tokenizes one value with a random token.
    pub fn tokenize(
        &self,
        subject: &str,
        field: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Token, Error> {
        self.default_actor().tokenize(subject, field, value)
    }

    /// Tokenizes one value with its deterministic token: the same (subject, field,
    /// value) always gives the same token, derived from the subject's key, so it
    /// cannot be recomputed once the subject is erased.
    pub fn tokenize_deterministic(
        &self,
        subject: &str,
        field: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Token, Error> {
        self.default_actor()
            .tokenize_deterministic(subject, field, value)
    }

    /// Tokenizes many values in one atomic write: either every value is stored and a
    /// token returned for each (in order), or nothing is stored. An invalid item fails
    /// the whole call with an [`InputError`](crate::InputError) naming its index.
    pub fn tokenize_batch(&self, items: &[TokenizeRequest<'_>]) -> Result<Vec<Token>, Error> {
        self.default_actor().tokenize_batch(items)
    }

    /// [`tokenize_batch`](Self::tokenize_batch) for callers that must not block
    /// while the write is synced (an async server): returns once the records are
    /// written, before they are durable. Await the [`Unsynced`] (or
    /// [`wait`](Unsynced::wait) for it) before handing the tokens out: a thread of
    /// the vault syncs the WAL for every write awaited (see the README's server
    /// section). This call itself may still wait, as a synced one does, for
    /// other writes of the same subjects and for the journal.
    ///
    /// In async code: try [`try_tokenize_batch_unsynced`](Self::try_tokenize_batch_unsynced)
    /// on the executor's thread, fall back to this on the blocking pool, and await
    /// the sync without holding a thread:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vault_core::{Token, TokenizeRequest, Vault};
    ///
    /// async fn store_email(vault: Arc<Vault>, customer: String, email: String)
    ///     -> Result<Token, Box<dyn std::error::Error + Send + Sync>> {
    ///     let request = [TokenizeRequest::new(&customer, "email", email.as_bytes())];
    ///     let unsynced = match vault.try_tokenize_batch_unsynced(&request)? {
    ///         Some(unsynced) => unsynced,
    ///         None => tokio::task::spawn_blocking(move || {
    ///             let request = [TokenizeRequest::new(&customer, "email", email.as_bytes())];
    ///             vault.tokenize_batch_unsynced(&request)
    ///         })
    ///         .await??,
    ///     };
    ///     let mut tokens = unsynced.await?; // durable now: hand the token out
    ///     Ok(tokens.remove(0))
    /// }
    /// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # let tmp = tempfile::tempdir()?;
    /// # let dir = tmp.path().join("vault");
    /// # let vault = Arc::new(Vault::open(&dir, &vault_core::RootKey::generate()?, Default::default())?);
    /// # let runtime = tokio::runtime::Runtime::new()?;
    /// # let token = runtime.block_on(store_email(vault.clone(), "c-1".into(), "a@b.example".into()))?;
    /// # assert_eq!(vault.detokenize(&token.to_string())?.value.as_str(), Some("a@b.example"));
    /// # drop(vault);
    /// # Ok(()) }
    /// ```
    pub fn tokenize_batch_unsynced(
        &self,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Unsynced<Vec<Token>>, Error> {
        self.default_actor().tokenize_batch_unsynced(items)
    }

    /// [`tokenize_batch_unsynced`](Self::tokenize_batch_unsynced) if it does not
    /// have to wait for anyone: no other write holds a lock it needs, is being
    /// written or is being synced (a purge's synced write included; the engine can
    /// still delay a write itself when compactions fall behind). `Ok(None)`, with
    /// nothing written, when it would have to; call
    /// `tokenize_batch_unsynced` where blocking is allowed then. Meant for an async
    /// executor's thread, where waiting for another caller's sync would stall
    /// every task. A vault on PostgreSQL always answers `Ok(None)`: each of its
    /// writes waits for the database.
    pub fn try_tokenize_batch_unsynced(
        &self,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Option<Unsynced<Vec<Token>>>, Error> {
        self.default_actor().try_tokenize_batch_unsynced(items)
    }

    /// [`tokenize_batch`](Self::tokenize_batch), recorded under `actor`.
    pub(crate) fn tokenize_by(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Vec<Token>, Error> {
        let sync = self.inner.journal.synced();
        self.tokenize_with(actor, items, Commit::Wait { sync })?
            .ok_or(Error::Integrity) // `Commit::Wait` always writes
    }

    /// [`tokenize_batch_unsynced`](Self::tokenize_batch_unsynced), recorded under
    /// `actor`.
    pub(crate) fn tokenize_unsynced_by(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Unsynced<Vec<Token>>, Error> {
        let tokens = self
            .tokenize_with(actor, items, Commit::Wait { sync: false })?
            .ok_or(Error::Integrity)?; // `Commit::Wait` always writes
        Ok(self.unsynced(tokens))
    }

    /// [`try_tokenize_batch_unsynced`](Self::try_tokenize_batch_unsynced), recorded
    /// under `actor`.
    pub(crate) fn try_tokenize_unsynced_by(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Option<Unsynced<Vec<Token>>>, Error> {
        Ok(self
            .tokenize_with(actor, items, Commit::IfFree)?
            .map(|tokens| self.unsynced(tokens)))
    }

    /// A value written without a sync, to await the sync that covers it. Counted
    /// after the write returned: the sync that covers the ticket starts after it.
    fn unsynced<T>(&self, value: T) -> Unsynced<T> {
        let ticket = self
            .inner
            .journal
            .synced()
            .then(|| self.inner.journal.wal_sync.written());
        Unsynced::new(value, ticket)
    }

    /// Tokenizes `items` under `actor`: one audit event per subject, committed with
    /// the records as `commit` says; `None` (nothing written) when `Commit::IfFree`
    /// would have had to wait.
    fn tokenize_with(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
        commit: Commit,
    ) -> Result<Option<Vec<Token>>, Error> {
        self.inner.check_items(items)?;
        if matches!(commit, Commit::IfFree) && self.writes_always_wait() {
            // Every write to a shared store waits for the database.
            return Ok(None);
        }
        let digits = |it: &TokenizeRequest<'_>| {
            matches!(it.format, Some(TokenFormat::Digits | TokenFormat::Luhn))
        };
        if matches!(commit, Commit::IfFree)
            && self.inner.backups.is_some()
            && items.iter().any(digits)
        {
            // Its tokens go into the erasure journal, a synced file write.
            return Ok(None);
        }
        self.inner
            .retrying(|| self.tokenize_once(actor, items, commit))
    }

    /// One attempt of [`tokenize_with`](Self::tokenize_with), on what it reads now.
    fn tokenize_once(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
        commit: Commit,
    ) -> Result<Option<Vec<Token>>, Error> {
        let inner = &*self.inner;
        let hashes: Vec<SubjectHash> = items
            .iter()
            .map(|it| inner.index.subject_hash(it.subject))
            .collect();
        let Some((stripes, _keys)) = inner.lock_subjects(&hashes, commit) else {
            return Ok(None);
        };
        let mut held = Held {
            own: Stripes::indices(hashes.iter()),
            guards: stripes,
            tally: Tally::default(),
            chosen: Vec::new(),
        };
        let now = inner.now();
        let (distinct, slots) = distinct_subjects(&hashes);
        let mut batch = inner.store.batch();
        let mut subjects = inner.subjects_for_tokenize(&distinct, &mut batch, now)?;
        let tokens = inner.seal_items(items, &slots, &mut subjects, &mut batch, now, &mut held)?;
        std::mem::take(&mut held.tally).write(&inner.index, &mut batch)?;
        // Tokens of digits in the erasure journal first (synced): a restore to
        // before this write must not issue them again.
        let _journaled = match &inner.backups {
            Some(backups) if !held.chosen.is_empty() => {
                let issued: Vec<(Sid, Destroyed)> = held
                    .chosen
                    .iter()
                    .map(|key| ([0; 16], Destroyed::Alias(alias::journal_hash(key))))
                    .collect();
                Some(backups.record(now, &issued, &mut batch)?)
            }
            _ => None,
        };
        for subject in subjects.iter().filter(|s| s.stored > 0) {
            batch.put(
                Cf::Subjects,
                &subject.hash,
                &encode(SUBJECT_FORMAT, &subject.known.entry),
            );
        }
        // One event per subject and kind: deterministic tokens (an equality check on
        // a value) apart from the rest.
        let mut events = Vec::with_capacity(subjects.len());
        for s in &subjects {
            let subject = Some(s.known.dek.audit_ref);
            let random = s.random;
            if s.deterministic > 0 {
                events.push(
                    AuditEvent::new(actor, AuditAction::TokenizeDeterministic, AuditOutcome::Ok)
                        .about(subject, s.deterministic),
                );
            }
            if s.deterministic == 0 || random > 0 {
                events.push(
                    AuditEvent::new(actor, AuditAction::Tokenize, AuditOutcome::Ok)
                        .about(subject, random),
                );
            }
        }
        match commit {
            Commit::Wait { sync } => {
                inner.journal.commit_audited(batch, events, sync)?;
            }
            Commit::IfFree => {
                if inner
                    .journal
                    .commit_audited_if_free(batch, events)?
                    .is_none()
                {
                    return Ok(None);
                }
            }
        }
        inner.keep_subjects(subjects);
        Ok(Some(tokens))
    }
}

/// What a tokenization holds until its write: its subjects' stripes and those of
/// the aliases it chose, and its changes to the inventory's counts.
struct Held<'a> {
    own: Vec<usize>,
    guards: Vec<MutexGuard<'a, ()>>,
    tally: Tally,
    /// The aliases chosen, for the erasure journal.
    chosen: Vec<[u8; 17]>,
}

/// The subjects' stripe locks, and the key lock for reading (so that no KEK
/// rotation batch runs meanwhile).
type SubjectLocks<'a> = (Vec<MutexGuard<'a, ()>>, RwLockReadGuard<'a, ()>);

/// The distinct subjects, in the order first named, and each item's among them.
fn distinct_subjects(hashes: &[SubjectHash]) -> (Vec<SubjectHash>, Vec<usize>) {
    let mut distinct: Vec<SubjectHash> = Vec::new();
    let mut position: HashMap<&SubjectHash, usize> = HashMap::with_capacity(hashes.len());
    let slots = hashes
        .iter()
        .map(|h| {
            *position.entry(h).or_insert_with(|| {
                distinct.push(*h);
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, slots)
}

impl Inner {
    /// Every item within the limits, or an error naming the first that is not.
    fn check_items(&self, items: &[TokenizeRequest<'_>]) -> Result<(), Error> {
        let limits = &self.opts.limits;
        limits.check_batch(items.len())?;
        for (i, item) in items.iter().enumerate() {
            limits.check_subject(item.subject).map_err(|e| e.at(i))?;
            limits.check_field(item.field).map_err(|e| e.at(i))?;
            limits.check_value(item.value).map_err(|e| e.at(i))?;
            if let Some(format) = item.format {
                if item.deterministic && format != TokenFormat::Email {
                    return Err(InputError::new(Argument::Format, Problem::NotDeterministic)
                        .at(i)
                        .into());
                }
                alias::check_shape(format, item.value)
                    .map_err(|p| InputError::new(Argument::Value, p).at(i))?;
            }
        }
        Ok(())
    }

    /// The locks a tokenization of these subjects holds; `None` when `IfFree` would
    /// have to wait for them, or for another write under way.
    fn lock_subjects<'a>(
        &'a self,
        hashes: &'a [SubjectHash],
        commit: Commit,
    ) -> Option<SubjectLocks<'a>> {
        match commit {
            Commit::Wait { .. } => Some((
                self.stripes.lock_all(hashes.iter()),
                self.keys
                    .writes()
                    .read()
                    .unwrap_or_else(PoisonError::into_inner),
            )),
            Commit::IfFree => {
                let stripes = self.stripes.try_lock_all(hashes.iter())?;
                let keys = match self.keys.writes().try_read() {
                    Ok(keys) => keys,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => return None,
                };
                (!self.journal.writes_in_the_way()).then_some((stripes, keys))
            }
        }
    }

    /// Each subject's entry and key, for writing: known subjects from the cache
    /// (taken out: they go back only once the write is committed), the others read,
    /// and new ones created in `batch`.
    fn subjects_for_tokenize(
        &self,
        distinct: &[SubjectHash],
        batch: &mut Batch<'_>,
        now: u64,
    ) -> Result<Vec<SubjectWrite>, Error> {
        let cached: Vec<Option<KnownSubject>> =
            distinct.iter().map(|h| self.subjects.remove(h)).collect();
        let unknown: Vec<SubjectHash> = distinct
            .iter()
            .zip(&cached)
            .filter(|(_, known)| known.is_none())
            .map(|(h, _)| *h)
            .collect();
        let mut found = if unknown.is_empty() {
            Vec::new()
        } else {
            self.store.multi_get(Cf::Subjects, &unknown)?
        }
        .into_iter();
        let ring = self.keys.sealed();
        let mut subjects = Vec::with_capacity(distinct.len());
        for (h, known) in distinct.iter().zip(cached) {
            let (known, created) = match known {
                Some(known) => (known, false),
                None => {
                    let found = found.next().flatten();
                    let (entry, dek, created) =
                        self.subject_for_write(h, found.as_deref(), &ring, batch, now)?;
                    (KnownSubject { entry, dek }, created)
                }
            };
            subjects.push(SubjectWrite {
                hash: *h,
                known,
                created,
                stored: 0,
                deterministic: 0,
                random: 0,
            });
        }
        Ok(subjects)
    }

    /// Seals each item under its subject's key into `batch` (record, index entry,
    /// expiry entry), and its token. A deterministic token already stored, or issued
    /// earlier in the batch, is handed out again without a write.
    fn seal_items<'a>(
        &'a self,
        items: &[TokenizeRequest<'_>],
        slots: &[usize],
        subjects: &mut [SubjectWrite],
        batch: &mut Batch<'_>,
        now: u64,
        held: &mut Held<'a>,
    ) -> Result<Vec<Token>, Error> {
        let mut tokens = Vec::with_capacity(items.len());
        // Deterministic ids issued by this batch (random ones cannot repeat).
        let mut issued: HashSet<TokenId> = HashSet::new();
        // Aliases chosen by this batch, not yet stored.
        let mut aliases: HashSet<[u8; 17]> = HashSet::new();
        for (item, &slot) in items.iter().zip(slots) {
            let SubjectWrite {
                known: KnownSubject { entry, dek },
                stored,
                deterministic,
                random,
                ..
            } = &mut subjects[slot];
            // Whether a live record past its period is stored under the id: it is
            // counted in the subject's entry already, and replaced.
            let mut replaced = None;
            let id: TokenId = if item.deterministic {
                *deterministic += 1;
                let id = self.index.tokens.record_key(
                    &dek.record_group,
                    &dek.deterministic_id(item.field, item.value),
                );
                // Handed out again while its record is live and not past its
                // retention period; otherwise (a stub, or expired) the value is
                // stored afresh, with a new creation time.
                let live = match self.store.get(Cf::Records, &id)? {
                    Some(bytes) => match decode(RECORD_FORMAT, &bytes)? {
                        StoredRecord::Live(record) => {
                            replaced = Some(record.created_at);
                            !self
                                .opts
                                .policy
                                .expired(&record.field, record.created_at, now)
                        }
                        _ => false,
                    },
                    None => false,
                };
                if issued.contains(&id) || live {
                    tokens.push(self.issued_token(&id, item.format));
                    continue;
                }
                issued.insert(id);
                id
            } else {
                self.index
                    .tokens
                    .record_key(&dek.record_group, &random_bytes()?)
            };
            let place = RecordPlace {
                vault_id: &self.vault_id,
                sid: &entry.sid,
                id: &id,
            };
            let record = StoredRecord::Live(LiveRecord::seal(
                &self.index,
                &place,
                item.field,
                now,
                item.deterministic,
                &dek.aead,
                item.value,
            )?);
            batch.put(Cf::Records, &id, &encode(RECORD_FORMAT, &record));
            // The index entry carries the record's expiry time, if it has one: the
            // purge of an erased subject finds its expiry entries through it.
            let expires = self.opts.policy.expires_at(item.field, now);
            let at = expires.map(u64::to_be_bytes);
            batch.put(
                Cf::Index,
                &index_key(&entry.sid, &id),
                at.as_ref().map_or(&[][..], |at| &at[..]),
            );
            if let Some(at) = expires {
                batch.put(Cf::Expiry, &expiry_key(at, &id), &entry.sid);
            }
            match replaced {
                Some(was) => held.tally.record_renewed(entry, item.field, was, now),
                None => held.tally.record_added(entry, item.field, now),
            }
            *stored += 1;
            if !item.deterministic {
                *random += 1;
            }
            if item.format.is_some() {
                self.issued_aliases
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let token = match item.format {
                Some(format @ (TokenFormat::Digits | TokenFormat::Luhn)) => {
                    let text = self.choose_alias(format, item.value, &mut aliases, held)?;
                    held.chosen.push(alias::forward_key(&self.index, &text));
                    for counter in alias::space_counters(&text) {
                        batch.add(&counter, 1);
                    }
                    alias::put(batch, &self.index, &text, &id, true);
                    Token::digits(text)
                }
                Some(TokenFormat::Email) => {
                    let token = self.index.tokens.token(&id).into_email();
                    alias::put_issued(batch, &id, &token.to_string());
                    token
                }
                None => self.index.tokens.token(&id),
            };
            tokens.push(token);
        }
        Ok(tokens)
    }

    /// The token of the record `id` in `format`, for a deterministic token handed
    /// out again (only the opaque forms can be deterministic).
    fn issued_token(&self, id: &TokenId, format: Option<TokenFormat>) -> Token {
        let token = self.index.tokens.token(id);
        match format {
            Some(TokenFormat::Email) => token.into_email(),
            _ => token,
        }
    }

    /// A free alias of `format` for `value`: not stored, not chosen earlier in
    /// this batch (`chosen`), and guarded until the write by its stripe (kept in
    /// `held`), so that no concurrent tokenization of this process takes it too.
    /// On a shared store the write also expects it absent.
    fn choose_alias<'a>(
        &'a self,
        format: TokenFormat,
        value: &[u8],
        chosen: &mut HashSet<[u8; 17]>,
        held: &mut Held<'a>,
    ) -> Result<String, Error> {
        if alias::known_full(&*self.store, format, value)? {
            return Err(Error::TokenSpaceExhausted);
        }
        let mut busy = false;
        for text in alias::candidates(format, value)? {
            let text = text?;
            let key = alias::forward_key(&self.index, &text);
            if chosen.contains(&key) {
                continue;
            }
            if self.store.get(Cf::Aliases, &key)?.is_some() {
                continue;
            }
            let stripe = Stripes::index_of(key[1], key[2]);
            if !held.own.contains(&stripe) {
                match self.stripes.try_lock_index(stripe) {
                    Some(guard) => {
                        held.guards.push(guard);
                        held.own.push(stripe);
                    }
                    None => {
                        busy = true;
                        continue;
                    }
                }
            }
            // Read again under the stripe: a write that held it may have stored it.
            if self.store.get(Cf::Aliases, &key)?.is_none() {
                chosen.insert(key);
                return Ok(text);
            }
        }
        // Every candidate was taken, or held by another write for a moment.
        Err(if busy {
            Error::Conflict
        } else {
            Error::TokenSpaceExhausted
        })
    }

    /// After the commit: the subjects back into the cache as stored, and a new
    /// subject's key into the key cache.
    fn keep_subjects(&self, subjects: Vec<SubjectWrite>) {
        for subject in subjects {
            if subject.created {
                let known = &subject.known;
                self.keys.remember(known.entry.sid, known.dek.clone());
            }
            // Cached as stored: a new subject's entry is written only with a record.
            if !subject.created || subject.stored > 0 {
                self.subjects.insert(subject.hash, subject.known);
            }
        }
    }
}
