;; A hostile atom with an inbox (atoms/ABI.md "The inbox"), for the runtime's tests.
;; Inbox at 1024 (input capacity 256), reply buffer at 2048, bump arena from 4096.
;; hx_inbox answers a different address after its first call (it must be asked once).
;; Methods, by their first letter:
;;   e(cho)    replies with its arguments, through the slot
;;   q         a slot with length -7, then blocks in invoke and yield (nested entries
;;             run meanwhile), then returns
;;   k         a slot with length 0x80000000 (the most negative i32)
;;   g(row)    grows the memory by a page and replies "G" from the new page through the slot
;;   c(ap)     writes a huge input capacity (0x7fffffff) into the inbox header, replies "C"
;;   m         replies "M" through hx.reply only, never touching the slot
;;   o(uter)   puts "O" in the slot, blocks, returns (a nested entry runs meanwhile)
;;   t(rap)    puts "T" in the slot and traps
;;   h         replies with the byte the interrupt handler last wrote
;; hx_interrupt writes "I" at 700 and puts it in the slot (a handler's reply goes nowhere).
(module
  (import "hx" "reply" (func $reply (param i32 i32)))
  (import "hx" "invoke" (func $invoke (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "hx" "yield" (func $yield (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $asked (mut i32) (i32.const 0))
  (data (i32.const 1028) "\ff\ff\ff\ff\00\01\00\00")
  (data (i32.const 512) "self")
  (func (export "hx_abi_version") (result i32) (i32.const 1))
  (func (export "hx_inbox") (result i32)
    (global.set $asked (i32.add (global.get $asked) (i32.const 1)))
    (if (result i32) (i32.eq (global.get $asked) (i32.const 1))
      (then (i32.const 1024)) (else (i32.const 60000))))
  (func (export "hx_alloc") (param $len i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $p))
  (func $slot (param $ptr i32) (param $len i32)
    (i32.store (i32.const 1024) (local.get $ptr))
    (i32.store (i32.const 1028) (local.get $len)))
  (func $say (param $byte i32)
    (i32.store8 (i32.const 2048) (local.get $byte))
    (call $slot (i32.const 2048) (i32.const 1)))
  (func $block
    (drop (call $invoke (i32.const 512) (i32.const 4) (i32.const 512) (i32.const 4)
                        (i32.const 0) (i32.const 0) (i32.const 600)))
    (drop (call $yield)))
  (func (export "hx_interrupt") (param $code i32) (param $p i32) (param $l i32)
    (i32.store8 (i32.const 700) (i32.const 0x49))
    (call $slot (i32.const 700) (i32.const 1)))
  (func (export "hx_invoke") (param $m i32) (param $ml i32) (param $a i32) (param $al i32)
                             (result i32) (local $c i32) (local $page i32)
    (local.set $c (i32.load8_u (local.get $m)))
    (if (i32.eq (local.get $c) (i32.const 0x65)) (then
      (memory.copy (i32.const 2048) (local.get $a) (local.get $al))
      (call $slot (i32.const 2048) (local.get $al)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x71)) (then
      (call $slot (i32.const 2048) (i32.const -7)) (call $block) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x6b)) (then
      (call $slot (i32.const 2048) (i32.const 0x80000000)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x67)) (then
      (local.set $page (memory.grow (i32.const 1)))
      (if (i32.lt_s (local.get $page) (i32.const 0)) (then (unreachable)))
      (local.set $page (i32.mul (local.get $page) (i32.const 65536)))
      (i32.store8 (local.get $page) (i32.const 0x47))
      (call $slot (local.get $page) (i32.const 1)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x63)) (then
      (i32.store (i32.const 1032) (i32.const 0x7fffffff))
      (call $say (i32.const 0x43)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x6d)) (then
      (i32.store8 (i32.const 600) (i32.const 0x4d))
      (call $reply (i32.const 600) (i32.const 1)) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x6f)) (then
      (call $say (i32.const 0x4f)) (call $block) (return (i32.const 0))))
    (if (i32.eq (local.get $c) (i32.const 0x74)) (then
      (call $say (i32.const 0x54)) (unreachable)))
    (if (i32.eq (local.get $c) (i32.const 0x68)) (then
      (call $slot (i32.const 700) (i32.const 1)) (return (i32.const 0))))
    (i32.const 0)))
