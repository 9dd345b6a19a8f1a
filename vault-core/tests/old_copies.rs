//! What an old copy of a vault directory can still read, after a rotation, the
//! retirement of the old KEK versions and a change of the root key: exactly what
//! the README says, and no more.

mod common;

use common::*;
use vault_core::{Error, PurgePolicy, RootKey, Vault};

#[test]
fn an_old_copy_opens_only_with_the_old_root_key_and_holds_only_what_it_held() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("live");
    let copy = tmp.path().join("copy");
    let new_root = RootKey::from_bytes(&[0x5a; 32])?;

    let vault = Vault::open(&live, &root(), options())?;
    let a = vault.tokenize("a", "email", "a@example.com")?.to_string();
    let b = vault.tokenize("b", "email", "b@example.com")?.to_string();
    let b_ref = subject_ref(&vault, "b");
    vault.close()?;
    copy_dir(&live, &copy)?;
    // B's key as wrapped under KEK version 1.
    let b_old_key = raw_get(&live, "keys", &hex_decode(&b_ref)).ok_or("B's key")?;

    // Erase A, rotate, retire the old KEK, change the root key.
    let vault = Vault::open(
        &live,
        &root(),
        options().purge_policy(PurgePolicy::Immediate),
    )?;
    vault.erase("a")?;
    let c = vault.tokenize("c", "email", "c@example.com")?.to_string();
    vault.start_kek_rotation()?;
    let (retired, status) = vault.retire_old_keks()?;
    assert_eq!(retired, vec![1]);
    assert_eq!(status.versions.len(), 1);
    assert_eq!(
        vault.retire_old_keks()?.0,
        Vec::<u32>::new(),
        "nothing left"
    );
    vault.change_root_key(&new_root)?;
    vault.close()?;

    // The live vault: only the new root key opens it.
    assert!(matches!(
        Vault::open(&live, &root(), options()),
        Err(Error::WrongRootKey)
    ));
    let vault = Vault::open(&live, &new_root, options())?;
    assert!(matches!(vault.detokenize(&a), Err(Error::Erased)));
    assert_eq!(vault.detokenize(&b)?.value.as_str(), Some("b@example.com"));
    assert!(vault.detokenize(&c).is_ok());
    vault.close()?;
    // B's key as it was wrapped before the rotation, recovered from the disk (say,
    // freed blocks) and put back: the KEK that wrapped it is retired, so it opens
    // nothing any more.
    raw_put(&live, "keys", &hex_decode(&b_ref), &b_old_key);
    let vault = Vault::open(&live, &new_root, options())?;
    assert!(
        matches!(vault.detokenize(&b), Err(Error::Integrity)),
        "a key wrapped under a retired KEK unwrapped"
    );
    vault.close()?;

    // The old copy: refused with the new root key...
    assert!(matches!(
        Vault::open(&copy, &new_root, options()),
        Err(Error::WrongRootKey)
    ));
    // ...and with the old one it reads what it held when it was taken (A, erased
    // since, included), and nothing written after (C).
    let old = Vault::open(&copy, &root(), options())?;
    assert_eq!(old.detokenize(&a)?.value.as_str(), Some("a@example.com"));
    assert_eq!(old.detokenize(&b)?.value.as_str(), Some("b@example.com"));
    assert!(matches!(old.detokenize(&c), Err(Error::NotFound)));
    old.close()?;
    Ok(())
}
