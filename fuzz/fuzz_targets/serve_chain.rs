//! One descriptor chain against the device, checked byte for byte against the reference
//! reading of docs/virtio-tpm.md (`vtpm_fuzz::predict`): the used length, whether and with
//! which bytes the engine ran, and every byte of guest memory afterwards (so the device
//! writes only inside write-flagged descriptors, and never more than used length). The scratch
//! buffer is wiped afterwards, and so is the engine's response.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vhost_vtpm::request::serve_chain;
use vtpm_fuzz::{memory, predict, snapshot, EngineCase, Image, MockEngine, DESC_TABLE, MAX};

#[derive(Arbitrary, Debug)]
struct Case {
    size_log2: u8,
    image: Image,
    /// Heads served besides the planned chains' (any value, beyond the queue too).
    extra_heads: Vec<u16>,
    engine: EngineCase,
}

fuzz_target!(|case: Case| {
    let queue_size = 1u16 << (case.size_log2 % 9);
    let (img, mut heads) = case.image.build(queue_size);
    heads.extend(case.extra_heads.iter().take(2));
    for &head in heads.iter().take(6) {
        let mem = memory(&img);
        let mut engine = MockEngine::new(case.engine);
        let mut scratch = [0u8; MAX];
        let served = serve_chain(
            &mem,
            DESC_TABLE,
            queue_size,
            head,
            &mut engine,
            &mut scratch,
        );
        let want = predict(&img, queue_size, head, case.engine);
        assert_eq!(served.used_len, want.used_len, "used length ({served:?})");
        assert_eq!(
            engine.commands.first(),
            want.command.as_ref(),
            "what the engine ran"
        );
        assert!(engine.commands.len() <= 1);
        assert_eq!(engine.wipes, engine.commands.len(), "response wiped");
        assert!(scratch.iter().all(|b| *b == 0), "command left in scratch");
        let after = snapshot(&mem);
        if after != want.memory {
            let first = after
                .iter()
                .zip(&want.memory)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!("guest memory differs from the reference first at {first:#x} ({served:?})");
        }
    }
});
