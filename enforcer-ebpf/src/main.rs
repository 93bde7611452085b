//! The enforcer's kernel programs. Entry points live in `programs/`, one file per hook, and
//! only gather inputs; `enforcer_common::destination` classifies, `enforcer_common::verdict`
//! decides, and `settle` carries a verdict out. Everything else here is a helper they share.
#![no_std]
#![no_main]

mod address;
mod conns;
mod counters;
mod destination;
mod events;
mod flows;
mod identity;
mod local;
mod maps;
mod packet;
mod policy;
mod programs;
mod protocol;
mod refusals;
mod settle;
mod sock_addr;
mod source;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach a panic, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
