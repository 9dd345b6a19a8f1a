//! Format-preserving tokens: digits, Luhn-valid card numbers and e-mail addresses
//! that fit the columns they replace, and still behave like any token.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{TestResult, luhn_valid, open, open_vault, options, root};
use vault_core::{Argument, Error, InputError, Problem, TokenFormat, TokenizeRequest, Vault};

fn tokenize_as(
    vault: &Vault,
    subject: &str,
    field: &str,
    value: &str,
    format: TokenFormat,
) -> Result<String, Error> {
    let item = TokenizeRequest::new(subject, field, value.as_bytes()).format(format);
    Ok(vault.tokenize_batch(&[item])?.remove(0).to_string())
}

#[test]
fn tokens_keep_their_format_and_are_unique() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let mut seen = HashSet::new();
    for i in 0..300u64 {
        let card = format!("4111{:012}", i * 7919);
        let subject = format!("s{}", i % 37);
        let digits = tokenize_as(&vault, &subject, "account", &card, TokenFormat::Digits)?;
        assert_eq!(digits.len(), 16);
        assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(digits, card);

        let luhn = tokenize_as(&vault, &subject, "card", &card, TokenFormat::Luhn)?;
        assert_eq!(luhn.len(), 16);
        assert!(luhn.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(&luhn[12..], &card[12..], "the last four are kept");
        assert!(luhn_valid(&luhn), "{luhn} is Luhn-valid");
        assert_ne!(luhn, card);

        let email = format!("person{i}@mail.example");
        let mail = tokenize_as(&vault, &subject, "email", &email, TokenFormat::Email)?;
        let (local, domain) = mail.split_once('@').expect("an address");
        assert_eq!(domain, vault_core::EMAIL_TOKEN_DOMAIN);
        assert!(local.starts_with("tok_"));
        assert!(!mail.contains("person"), "nothing of the value is kept");

        for (token, value) in [(&digits, &card), (&luhn, &card), (&mail, &email)] {
            assert!(seen.insert(token.clone()), "tokens are unique");
            assert_eq!(
                vault.detokenize(token)?.value.as_str(),
                Some(value.as_str())
            );
        }
    }
    // A digit string the vault never issued has a token's shape: no record.
    assert!(matches!(
        vault.detokenize("0000000000000000"),
        Err(Error::NotFound)
    ));
    // The opaque form of an e-mail token at another domain is not a token at all.
    let mail = tokenize_as(&vault, "s1", "email", "x@y.example", TokenFormat::Email)?;
    let (local, _) = mail.split_once('@').expect("an address");
    assert!(matches!(
        vault.detokenize(&format!("{local}@example.com")),
        Err(Error::InvalidToken)
    ));
    // Another vault's token in e-mail form has the shape, and no record here.
    let other_dir = tempfile::tempdir()?;
    let other = open(other_dir.path());
    let theirs = tokenize_as(&other, "s1", "email", "x@y.example", TokenFormat::Email)?;
    assert!(matches!(vault.detokenize(&theirs), Err(Error::NotFound)));
    assert_eq!(vault.detokenize(local)?.value.as_str(), Some("x@y.example"));
    Ok(())
}

#[test]
fn values_that_do_not_fit_their_format_are_refused_and_nothing_is_stored() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let good = TokenizeRequest::new("s1", "card", b"4111111111111111").format(TokenFormat::Luhn);
    let cases = [
        (
            TokenizeRequest::new("s1", "card", b"4111-1111").format(TokenFormat::Digits),
            Argument::Value,
            Problem::WrongShape,
        ),
        (
            TokenizeRequest::new("s1", "card", b"").format(TokenFormat::Digits),
            Argument::Value,
            Problem::Empty,
        ),
        (
            TokenizeRequest::new("s1", "card", b"1234567").format(TokenFormat::Luhn),
            Argument::Value,
            Problem::WrongShape,
        ),
        (
            TokenizeRequest::new("s1", "card", b"12345678901234567890").format(TokenFormat::Luhn),
            Argument::Value,
            Problem::WrongShape,
        ),
        (
            TokenizeRequest::new("s1", "card", b"1234")
                .format(TokenFormat::Digits)
                .deterministic(),
            Argument::Format,
            Problem::NotDeterministic,
        ),
    ];
    for (bad, argument, problem) in cases {
        match vault.tokenize_batch(&[good, bad]) {
            Err(Error::InvalidInput(e)) => {
                assert_eq!(
                    e,
                    InputError {
                        item: Some(1),
                        argument,
                        problem
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(vault.export("s1")?.records.is_empty(), "nothing stored");
    assert!("hex".parse::<TokenFormat>().is_err());
    // An e-mail token can be deterministic: the same one again.
    let det = TokenizeRequest::new("s1", "email", b"a@b.example")
        .format(TokenFormat::Email)
        .deterministic();
    let first = vault.tokenize_batch(&[det])?.remove(0).to_string();
    assert_eq!(vault.tokenize_batch(&[det])?.remove(0).to_string(), first);
    assert!(first.ends_with("@example.net"));
    Ok(())
}

#[test]
fn a_small_token_space_fills_to_the_last_token_and_is_never_reused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    // 4 digits: 10 000 tokens, less the value itself.
    let mut tokens = HashSet::new();
    for chunk in 0..20 {
        let subjects: Vec<String> = (0..500)
            .map(|i| format!("s{}", (chunk * 500 + i) % 97))
            .collect();
        let items: Vec<TokenizeRequest<'_>> = subjects
            .iter()
            .map(|s| TokenizeRequest::new(s, "pin", b"1234").format(TokenFormat::Digits))
            .collect();
        match vault.tokenize_batch(&items) {
            Ok(issued) => {
                for t in issued {
                    assert!(tokens.insert(t.to_string()), "no token issued twice");
                }
            }
            // The last chunk does not fit: the batch is refused whole.
            Err(Error::TokenSpaceExhausted) => assert_eq!(tokens.len(), 9_500),
            Err(e) => return Err(e.into()),
        }
    }
    let single = TokenizeRequest::new("s1", "pin", b"1234").format(TokenFormat::Digits);
    for _ in 0..499 {
        tokens.insert(vault.tokenize_batch(&[single])?.remove(0).to_string());
    }
    assert_eq!(tokens.len(), 9_999);
    assert!(!tokens.contains("1234"));
    assert!(tokens.iter().all(|t| t.len() == 4));
    assert!(matches!(
        vault.tokenize_batch(&[single]),
        Err(Error::TokenSpaceExhausted)
    ));
    // Erasing every holder frees nothing: an old token must never name another value.
    for s in 0..97 {
        vault.erase(&format!("s{s}"))?;
    }
    vault.purge_now()?;
    assert!(matches!(
        vault.tokenize_batch(&[single]),
        Err(Error::TokenSpaceExhausted)
    ));
    let some = tokens.iter().next().expect("a token");
    assert!(matches!(vault.detokenize(some), Err(Error::Erased)));
    // Other lengths are other spaces.
    assert_eq!(
        tokenize_as(&vault, "s1", "pin", "12345", TokenFormat::Digits)?.len(),
        5
    );
    Ok(())
}

#[test]
fn concurrent_writers_never_share_a_token() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = Arc::new(open(dir.path()));
    // 2 digits: 99 tokens for 4 threads asking 30 each.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let vault = vault.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut exhausted = 0;
                for i in 0..30 {
                    let subject = format!("t{t}-{i}");
                    match tokenize_as(&vault, &subject, "code", "42", TokenFormat::Digits) {
                        Ok(token) => mine.push(token),
                        Err(Error::TokenSpaceExhausted) => exhausted += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (mine, exhausted)
            })
        })
        .collect();
    let mut all = HashSet::new();
    let mut exhausted = 0;
    for t in threads {
        let (mine, full) = t.join().expect("thread");
        exhausted += full;
        for token in mine {
            assert!(all.insert(token), "a token issued twice");
        }
    }
    assert_eq!(all.len(), 99);
    assert_eq!(exhausted, 120 - 99);
    for token in &all {
        assert_eq!(vault.detokenize(token)?.value.as_str(), Some("42"));
    }
    Ok(())
}

#[test]
fn format_tokens_rectify_delete_export_erase_and_survive_a_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (card, mail, plain) = {
        let vault = open(dir.path());
        let card = tokenize_as(
            &vault,
            "alice",
            "card",
            "5500005555555559",
            TokenFormat::Luhn,
        )?;
        let mail = tokenize_as(
            &vault,
            "alice",
            "email",
            "alice@mail.example",
            TokenFormat::Email,
        )?;
        let plain = vault.tokenize("alice", "name", "Alice")?.to_string();
        vault.rectify(&card, "5500005555554445")?;
        assert_eq!(
            vault.detokenize(&card)?.value.as_str(),
            Some("5500005555554445")
        );
        let export = vault.export("alice")?;
        let mut shown: Vec<String> = export.records.iter().map(|r| r.token.to_string()).collect();
        shown.sort();
        let mut issued = vec![card.clone(), mail.clone(), plain.clone()];
        issued.sort();
        assert_eq!(shown, issued, "an export shows the tokens as issued");
        (card, mail, plain)
    };
    let vault = open_vault(dir.path(), &root(), options())?;
    assert_eq!(
        vault.detokenize(&card)?.value.as_str(),
        Some("5500005555554445")
    );
    assert_eq!(
        vault.detokenize(&mail)?.value.as_str(),
        Some("alice@mail.example")
    );
    let temp = tokenize_as(&vault, "alice", "code", "777", TokenFormat::Digits)?;
    vault.delete(&temp)?;
    assert!(matches!(vault.detokenize(&temp), Err(Error::NotFound)));
    vault.erase("alice")?;
    for t in [&card, &mail, &plain] {
        assert!(matches!(vault.detokenize(t), Err(Error::Erased)), "{t}");
    }
    vault.purge_now()?;
    for t in [&card, &mail, &plain] {
        assert!(matches!(vault.detokenize(t), Err(Error::Erased)), "{t}");
    }
    Ok(())
}

#[test]
fn a_full_space_is_known_without_a_search() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    // One digit: "5" gets the 9 others, then "6" gets "5": all 10 are taken.
    for i in 0..9 {
        tokenize_as(&vault, &format!("a{i}"), "d", "5", TokenFormat::Digits)?;
    }
    assert_eq!(
        tokenize_as(&vault, "b", "d", "6", TokenFormat::Digits)?,
        "5"
    );
    let before = vault.storage_counters();
    assert!(matches!(
        tokenize_as(&vault, "c", "d", "7", TokenFormat::Digits),
        Err(Error::TokenSpaceExhausted)
    ));
    let reads = vault.storage_counters().keys_read - before.keys_read;
    // The subject entry, its key, and the counter of 1-digit tokens: no candidate.
    assert!(reads <= 4, "{reads} reads");
    // Luhn tokens count by length and last four: 8 digits ending 1111 leave
    // 3 free digits, 1 000 tokens (the value itself is not Luhn-valid).
    let card = "4111111111111111";
    let mut issued = 0;
    loop {
        match tokenize_as(
            &vault,
            &format!("l{issued}"),
            "card",
            "00001111",
            TokenFormat::Luhn,
        ) {
            Ok(t) => {
                assert!(t.ends_with("1111") && t.len() == 8);
                issued += 1;
            }
            Err(Error::TokenSpaceExhausted) => break,
            Err(e) => return Err(e.into()),
        }
    }
    assert_eq!(issued, 1_000);
    let before = vault.storage_counters();
    assert!(matches!(
        tokenize_as(&vault, "n", "card", "99991111", TokenFormat::Luhn),
        Err(Error::TokenSpaceExhausted)
    ));
    assert!(vault.storage_counters().keys_read - before.keys_read <= 4);
    // Another last four is another space.
    assert!(tokenize_as(&vault, "m", "card", card, TokenFormat::Luhn).is_ok());
    Ok(())
}
