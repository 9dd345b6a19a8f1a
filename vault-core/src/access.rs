//! Purpose-bound detokenization: the checks that stand between a token and its value.
//!
//! For each token, in this order, and before anything is decrypted: the record must
//! exist and its subject not be erased; the purpose must cover the record's field
//! ([`Error::Forbidden`]); where the purpose's basis is consent, the subject's consent
//! must be granted now ([`Error::NoConsent`]). Only then is the value decrypted, and
//! masked inside the vault when the purpose or the caller is limited to masked views.

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::error::{Argument, Error, InputError, Problem};
use crate::events::{AuditAction, AuditOutcome, ReadEvent};
use crate::purposes::{Access, LawfulBasis};
use crate::records::Detokenized;
use crate::store::{Cf, Storage};
use crate::subjects::Sid;
use crate::token::TokenId;
use crate::vault::Vault;

impl Vault {
    /// Detokenizes for a declared purpose, with one result per token, in order.
    ///
    /// The whole call fails only when the purpose is not declared
    /// ([`Error::UnknownPurpose`]), the batch is invalid, or an item does not have a
    /// token's shape (an [`InputError`](crate::InputError) naming it); each token's
    /// own outcome is its value, or [`Error::Forbidden`], [`Error::NoConsent`],
    /// [`Error::Expired`], [`Error::NotFound`] (deleted, or a token this vault did
    /// not issue, such as another vault's), [`Error::Erased`] or
    /// [`Error::Integrity`]. Every token's outcome is recorded in the audit trail
    /// before the values are returned. A consent
    /// withdrawal is seen by the next call: consent is read from storage, not cached.
    pub fn detokenize_for<S: AsRef<str>>(
        &self,
        tokens: &[S],
        access: &Access<'_>,
    ) -> Result<Vec<Result<Detokenized, Error>>, Error> {
        let inner = &*self.inner;
        let purpose = inner
            .opts
            .policy
            .purpose(access.purpose)
            .ok_or(Error::UnknownPurpose)?;
        inner.opts.limits.check_batch(tokens.len())?;
        // The actor goes into the audit trail: a name, never an address or free text.
        self.as_actor(access.actor)?;
        // Text without a token's shape fails the whole call, before anything is read
        // or audited: it is a caller's mistake, not an access. A token of that shape
        // this vault did not issue is answered, and audited, like a missing record:
        // whether the vault issued it is a lookup, not something a caller can check.
        let mut ids: Vec<Result<TokenId, Error>> = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            match inner.token_id(token.as_ref()) {
                Ok(id) => ids.push(Ok(id)),
                Err(Error::NotFound) => ids.push(Err(Error::NotFound)),
                Err(Error::InvalidToken) => {
                    return Err(InputError::new(Argument::Token, Problem::NotAToken)
                        .at(i)
                        .into());
                }
                Err(e) => return Err(e),
            }
        }
        let valid: Vec<TokenId> = ids
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let mut found = inner.store.multi_get(Cf::Records, &valid)?.into_iter();
        let masked = access.masked || purpose.is_masked();
        let now = inner.now();
        // Consent is read once per subject per call.
        let mut consent: HashMap<Sid, bool> = HashMap::new();

        // The subject reference of each token's record, for its audit event.
        let mut refs: Vec<Option<[u8; 16]>> = Vec::with_capacity(tokens.len());
        let mut open = |id: &TokenId,
                        bytes: &[u8],
                        subject: &mut Option<[u8; 16]>|
         -> Result<Detokenized, Error> {
            let (record, dek) = inner.live_record(id, bytes)?;
            *subject = Some(dek.audit_ref);
            inner.check_retention(&record, now)?;
            if !purpose.covers(&record.field) {
                return Err(Error::Forbidden);
            }
            if purpose.basis() == LawfulBasis::Consent {
                let granted = match consent.get(&record.sid) {
                    Some(granted) => *granted,
                    None => {
                        let granted = inner.consent_granted(&record.sid, &dek, purpose.name())?;
                        consent.insert(record.sid, granted);
                        granted
                    }
                };
                if !granted {
                    return Err(Error::NoConsent);
                }
            }
            let value = record.open(&inner.vault_id, id, &dek.aead)?;
            let value = if masked {
                let mask = inner.opts.policy.mask_for(&record.field);
                let text = std::str::from_utf8(&value).unwrap_or("");
                Zeroizing::new(mask.apply(text).into_bytes())
            } else {
                value
            };
            Ok(Detokenized::of(record, value, masked))
        };
        let results: Vec<Result<Detokenized, Error>> = ids
            .into_iter()
            .map(|id| {
                let mut subject = None;
                let result = id.and_then(|id| match found.next().flatten() {
                    Some(bytes) => open(&id, &bytes, &mut subject),
                    None => Err(Error::NotFound),
                });
                refs.push(subject);
                result
            })
            .collect();
        // One event per token, committed before any value is handed out: no access
        // without its record.
        let events: Vec<_> = results
            .iter()
            .zip(refs)
            .map(|(result, subject)| {
                ReadEvent::new(
                    access.actor,
                    AuditAction::Detokenize,
                    AuditOutcome::of(result),
                )
                .purpose(purpose.name())
                .about(subject, u64::from(result.is_ok()))
            })
            .collect();
        inner.commit_read_events(&events)?;
        Ok(results)
    }
}
