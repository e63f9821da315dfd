//! Classifier and fingerprint on arbitrary input, both dialects: never panic, and the
//! allocation-free hash always equals the fingerprint's.
#![no_main]

use diesel_rwsplit::classify::{Classifier, Dialect, Verdict};
use diesel_rwsplit::SwitchReason;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data);
    for dialect in [Dialect::Postgres, Dialect::Mysql] {
        let classifier = Classifier::new(dialect);
        let verdict = classifier.classify(&sql);
        let fingerprint = classifier.fingerprint(&sql);
        assert_eq!(classifier.fingerprint_hash(&sql), fingerprint.hash());
        if sql.trim().is_empty() {
            assert_eq!(verdict, Verdict::Primary(SwitchReason::Unknown));
        }
    }
});
