//! Who does it: the name an operation is recorded under in the audit trail.
//!
//! Calls made on the [`Vault`] itself are recorded under
//! [`VaultOptions::actor`](crate::VaultOptions::actor) (default `embedded`); a service
//! that acts for several callers (the HTTP server, per API key) names each through
//! [`Vault::as_actor`]. Purpose-bound reads name theirs in [`Access`](crate::Access).
//!
//! The operations take their actor as an argument (`Vault::<op>_by(actor, …)`, in
//! their own modules; a purpose-bound read takes it in its `Access`). The methods
//! of [`Actor`] call them with their name, and those of [`Vault`] go through
//! [`Vault::default_actor`], so both take the same route.

use crate::durable::Unsynced;
use crate::erase::ErasureReceipt;
use crate::error::{Argument, Error, InputError, Problem};
use crate::export::SubjectExport;
use crate::options::valid_actor;
use crate::records::Detokenized;
use crate::token::Token;
use crate::tokenize::TokenizeRequest;
use crate::vault::Vault;
use crate::{ConsentEvent, ConsentStatus};

/// The vault, acting for a named caller: the same operations as on [`Vault`], each
/// recorded in the audit trail under that name.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'v> {
    vault: &'v Vault,
    name: &'v str,
}

impl Vault {
    /// Acts as `name`: 1-64 of ASCII letters, digits, `_`, `-`, `.`, `:` (a service
    /// or API key name; it is kept in the audit trail, so never personal data).
    pub fn as_actor<'v>(&'v self, name: &'v str) -> Result<Actor<'v>, Error> {
        if !valid_actor(name) {
            let problem = match name.len() {
                0 => Problem::Empty,
                1..=64 => Problem::BadCharacter,
                _ => Problem::TooLong { limit: 64 },
            };
            return Err(InputError::new(Argument::Actor, problem).into());
        }
        Ok(Actor { vault: self, name })
    }

    /// The actor of calls made on the vault itself (already validated at open).
    pub(crate) fn default_actor(&self) -> Actor<'_> {
        Actor {
            vault: self,
            name: &self.inner.opts.actor,
        }
    }
}

impl Actor<'_> {
    /// The name recorded.
    pub fn name(&self) -> &str {
        self.name
    }

    /// [`Vault::tokenize`].
    pub fn tokenize(
        &self,
        subject: &str,
        field: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Token, Error> {
        let request = TokenizeRequest::new(subject, field, value.as_ref());
        let tokens = self.tokenize_batch(&[request]).map_err(Error::single)?;
        Ok(self.one_token(tokens))
    }

    /// [`Vault::tokenize_deterministic`].
    pub fn tokenize_deterministic(
        &self,
        subject: &str,
        field: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Token, Error> {
        let request = TokenizeRequest::new(subject, field, value.as_ref()).deterministic();
        let tokens = self.tokenize_batch(&[request]).map_err(Error::single)?;
        Ok(self.one_token(tokens))
    }

    fn one_token(&self, mut tokens: Vec<Token>) -> Token {
        // One token per request, and we sent one.
        tokens.pop().expect("one token per request")
    }

    /// [`Vault::tokenize_batch`].
    pub fn tokenize_batch(&self, items: &[TokenizeRequest<'_>]) -> Result<Vec<Token>, Error> {
        self.vault.tokenize_by(self.name, items)
    }

    /// [`Vault::tokenize_batch_unsynced`].
    pub fn tokenize_batch_unsynced(
        &self,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Unsynced<Vec<Token>>, Error> {
        self.vault.tokenize_unsynced_by(self.name, items)
    }

    /// [`Vault::try_tokenize_batch_unsynced`].
    pub fn try_tokenize_batch_unsynced(
        &self,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Option<Unsynced<Vec<Token>>>, Error> {
        self.vault.try_tokenize_unsynced_by(self.name, items)
    }

    /// [`Vault::detokenize`].
    pub fn detokenize(&self, token: &str) -> Result<Detokenized, Error> {
        self.vault.detokenize_one_by(self.name, token)
    }

    /// [`Vault::detokenize_batch`].
    pub fn detokenize_batch<S: AsRef<str>>(
        &self,
        tokens: &[S],
    ) -> Result<Vec<Result<Detokenized, Error>>, Error> {
        self.vault.detokenize_by(self.name, tokens)
    }

    /// [`Vault::rectify`].
    pub fn rectify(&self, token: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.vault.rectify_by(self.name, token, value.as_ref())
    }

    /// [`Vault::delete`].
    pub fn delete(&self, token: &str) -> Result<(), Error> {
        self.vault.delete_by(self.name, token)
    }

    /// [`Vault::erase`].
    pub fn erase(&self, subject: &str) -> Result<ErasureReceipt, Error> {
        self.vault.erase_by(self.name, subject)
    }

    /// [`Vault::export`].
    pub fn export(&self, subject: &str) -> Result<SubjectExport, Error> {
        self.vault.export_by(self.name, subject, None, usize::MAX)
    }

    /// [`Vault::overview`].
    pub fn overview(&self, subject: &str, limit: usize) -> Result<crate::SubjectOverview, Error> {
        self.vault.overview_by(self.name, subject, limit)
    }

    /// [`Vault::export_page`].
    pub fn export_page(
        &self,
        subject: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SubjectExport, Error> {
        self.vault.export_by(self.name, subject, cursor, limit)
    }

    /// [`Vault::consents`].
    pub fn consents(&self, subject: &str) -> Result<Vec<ConsentStatus>, Error> {
        self.vault.consents_by(self.name, subject)
    }

    /// [`Vault::record_consent`].
    pub fn record_consent(
        &self,
        subject: &str,
        purpose: &str,
        granted: bool,
        source: Option<&str>,
    ) -> Result<ConsentEvent, Error> {
        self.vault
            .record_consent_by(self.name, subject, purpose, granted, source)
    }
}
