#![no_std]
//! Empty: the programs are the binary target, built for bpf by sockwatch/build.rs.
