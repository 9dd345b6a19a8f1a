//! Reads without a purpose: a token back to its field and value, for the
//! controller's own processing. Each read is recorded in the audit trail before its
//! value is returned. (Purpose-bound reads are in `access`.)

use crate::error::Error;
use crate::events::{AuditAction, AuditOutcome, ReadEvent};
use crate::records::Detokenized;
use crate::store::{Cf, Storage};
use crate::token::TokenId;
use crate::vault::{Inner, Vault};

impl Vault {
    /// Turns a token back into its field and value.
    ///
    /// Errors: [`Error::InvalidToken`] (the text does not have a token's shape),
    /// [`Error::NotFound`] (deleted, or not issued by this vault: another vault's
    /// token, or digits no token was issued as), [`Error::Erased`],
    /// [`Error::Expired`], [`Error::Integrity`].
    /// The read is recorded in the audit trail (no purpose) before it returns; text
    /// that is not a token is not.
    pub fn detokenize(&self, token: &str) -> Result<Detokenized, Error> {
        self.default_actor().detokenize(token)
    }

    /// [`detokenize_by`](Self::detokenize_by) of one token, without its vectors: a
    /// point read of a pinned value, one event.
    pub(crate) fn detokenize_one_by(&self, actor: &str, token: &str) -> Result<Detokenized, Error> {
        let inner = &*self.inner;
        // Text that is not a token is refused, and not recorded, as in a batch.
        let (result, event) = match inner.token_id(token) {
            Ok(id) => inner.store.with_value(Cf::Records, &id, |bytes| {
                inner.read_record(actor, bytes.map(|bytes| (&id, bytes)))
            })?,
            // A token this vault did not issue: a read of a missing record.
            Err(Error::NotFound) => inner.read_record(actor, None),
            Err(e) => return Err(e),
        };
        inner.commit_read_events(&[event])?;
        result
    }

    /// Detokenizes many tokens, with one result per token, in order: one bad token
    /// does not fail the others. Each token's outcome is recorded in the audit trail
    /// (no purpose; text that is not a token is not) before the values are returned.
    pub fn detokenize_batch<S: AsRef<str>>(
        &self,
        tokens: &[S],
    ) -> Result<Vec<Result<Detokenized, Error>>, Error> {
        self.default_actor().detokenize_batch(tokens)
    }

    pub(crate) fn detokenize_by<S: AsRef<str>>(
        &self,
        actor: &str,
        tokens: &[S],
    ) -> Result<Vec<Result<Detokenized, Error>>, Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_batch(tokens.len())?;
        let ids: Vec<Result<TokenId, Error>> =
            tokens.iter().map(|t| inner.token_id(t.as_ref())).collect();
        let valid: Vec<TokenId> = ids
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let mut found = inner.store.multi_get(Cf::Records, &valid)?.into_iter();
        let mut events = Vec::with_capacity(valid.len());
        let results = ids
            .into_iter()
            .map(|id| {
                let (result, event) = match id {
                    Ok(id) => {
                        let bytes = found.next().flatten();
                        inner.read_record(actor, bytes.as_deref().map(|bytes| (&id, bytes)))
                    }
                    // A token this vault did not issue: a read of a missing record.
                    Err(Error::NotFound) => inner.read_record(actor, None),
                    Err(e) => return Err(e),
                };
                events.push(event);
                result
            })
            .collect();
        if !events.is_empty() {
            inner.commit_read_events(&events)?;
        }
        Ok(results)
    }
}

impl Inner {
    /// A detokenization of the record `found` (its id and stored bytes; `None`: not
    /// found), and its event for the trail.
    fn read_record<'a>(
        &self,
        actor: &'a str,
        found: Option<(&TokenId, &[u8])>,
    ) -> (Result<Detokenized, Error>, ReadEvent<'a>) {
        let mut subject = None;
        let result = match found {
            Some((id, bytes)) => self.open_record(id, bytes, &mut subject),
            None => Err(Error::NotFound),
        };
        let event = ReadEvent::new(actor, AuditAction::Detokenize, AuditOutcome::of(&result))
            .about(subject, u64::from(result.is_ok()));
        (result, event)
    }

    /// A stored record's field and value, checked for retention; `subject` is set to
    /// its subject's audit reference when the key is found.
    fn open_record(
        &self,
        id: &TokenId,
        bytes: &[u8],
        subject: &mut Option<[u8; 16]>,
    ) -> Result<Detokenized, Error> {
        let (record, dek) = self.live_record(id, bytes)?;
        *subject = Some(dek.audit_ref);
        self.check_retention(&record, self.now())?;
        let value = record.open(&self.vault_id, id, &dek.aead)?;
        Ok(Detokenized::of(record, value, false))
    }
}
