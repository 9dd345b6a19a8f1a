//! Purpose-bound detokenization: the checks that stand between a token and its value.
//!
//! For each token, in this order, and before anything is decrypted: the record must
//! exist and its subject not be erased; the purpose must cover the record's field
//! ([`Error::Forbidden`]); where the purpose's basis is consent, the subject's consent
//! must be granted now ([`Error::NoConsent`]). Only then is the value decrypted, and
//! masked inside the vault when the purpose or the caller is limited to masked views.

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::codec::decode;
use crate::error::Error;
use crate::purposes::{Access, LawfulBasis};
use crate::records::{
    Detokenized, LiveRecord, Plaintext, RECORD_FORMAT, StoredRecord, expired_outcome, stub_outcome,
};
use crate::store::Cf;
use crate::subjects::Sid;
use crate::token::TokenId;
use crate::vault::Vault;

impl Vault {
    /// Detokenizes for a declared purpose, with one result per token, in order.
    ///
    /// The whole call fails only when the purpose is not declared
    /// ([`Error::UnknownPurpose`]) or the batch is invalid; each token's own outcome is
    /// its value, or [`Error::Forbidden`], [`Error::NoConsent`], [`Error::NotFound`],
    /// [`Error::Erased`], [`Error::InvalidToken`] or [`Error::Integrity`]. A consent
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
        let ids: Vec<Result<TokenId, Error>> =
            tokens.iter().map(|t| inner.token_id(t.as_ref())).collect();
        let valid: Vec<TokenId> = ids
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let mut found = inner.store.multi_get(Cf::Records, &valid)?.into_iter();
        let masked = access.masked || purpose.is_masked();
        let now = inner.now();
        // Consent is read once per subject per call.
        let mut consent: HashMap<Sid, bool> = HashMap::new();

        let mut open = |id: &TokenId, bytes: &[u8]| -> Result<Detokenized, Error> {
            let record: LiveRecord = match decode(RECORD_FORMAT, bytes)? {
                StoredRecord::Shredded { tag } => return Err(stub_outcome(&inner.index, id, &tag)),
                StoredRecord::Expired { tag } => {
                    return Err(expired_outcome(&inner.index, id, &tag));
                }
                StoredRecord::Live(record) => record,
            };
            let dek = inner
                .dek(&record.sid)?
                .ok_or_else(|| inner.missing_key(&record.sid, id, &record.link))?;
            if inner
                .opts
                .policy
                .expired(&record.field, record.created_at, now)
            {
                return Err(Error::Expired);
            }
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
            let LiveRecord {
                field, created_at, ..
            } = record;
            Ok(Detokenized {
                field,
                value: Plaintext::new(value),
                created_at,
                masked,
            })
        };
        Ok(ids
            .into_iter()
            .map(|id| {
                let id = id?;
                match found.next().flatten() {
                    Some(bytes) => open(&id, &bytes),
                    None => Err(Error::NotFound),
                }
            })
            .collect())
    }
}
