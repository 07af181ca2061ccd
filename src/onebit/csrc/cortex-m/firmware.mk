# Bare-metal Cortex-M firmware (a folder exported with --target cortex-m4 / cortex-m7; included by the
# Makefile). `make firmware` builds firmware-$(MODE).elf for the board named in cortex-m/board.mk:
# the library (onebit.c), the semihosting harness (cortex-m/onebit_mcu.c), the reset code and the board's
# linker script; the arena is static and sized for MODE (int, int8 or float). `make firmware-size` prints
# flash and RAM from arm-none-eabi-size; `make run-firmware IMAGES=FILE` runs it in qemu-system-arm
# (ICOUNT=1 adds -icount shift=0: one emulated nanosecond per executed instruction).
include cortex-m/board.mk
MODE ?= int
STACK ?= 8192
SIZE ?= arm-none-eabi-size
QEMU ?= qemu-system-arm
IMAGES ?= images.bin
FW_FLAGS ?=
FW_LDFLAGS ?=
# the firmware is optimised harder than the host build (-O2): -O3 executes fewer instructions for a little
# more code; FW_OPT=-O2 or -Os to trade back
FW_OPT ?= -O3
FW_MODE_int = ONEBIT_INT
FW_MODE_int8 = ONEBIT_INT8
FW_MODE_float = ONEBIT_FLOAT
FW_SOURCES = onebit.c cortex-m/onebit_mcu.c cortex-m/startup_cortexm.c cortex-m/ob_semihost.c
FW_HEADERS = $(HEADERS) cortex-m/ob_semihost.h cortex-m/boards/$(BOARD).ld cortex-m/boards/cortex-m-sections.ld

firmware: firmware-$(MODE).elf

firmware-$(MODE).elf: $(FW_SOURCES) $(FW_HEADERS)
	$(CC) $(OB_CFLAGS) $(CFLAGS) $(FW_OPT) $(ARCH) $(SIMD) $(FW_FLAGS) -ffunction-sections -fdata-sections -I. -Icortex-m \
	    -DOB_FIRMWARE_MODE=$(FW_MODE_$(MODE)) -nostartfiles -Lcortex-m/boards -T cortex-m/boards/$(BOARD).ld \
	    -Wl,--gc-sections -Wl,--defsym=OB_STACK_BYTES=$(STACK) $(FW_LDFLAGS) -Wl,-Map=firmware-$(MODE).map \
	    -o $@ $(FW_SOURCES)

firmware-size: firmware-$(MODE).elf
	$(SIZE) -A $<

run-firmware: firmware-$(MODE).elf
	$(QEMU) -M $(BOARD) -display none -monitor none -serial none $(if $(filter 1,$(ICOUNT)),-icount shift=0) \
	    -chardev stdio,id=ob -semihosting-config enable=on,target=native,chardev=ob,arg=onebit_mcu,arg=$(IMAGES) \
	    -kernel $<

.PHONY: firmware firmware-size run-firmware
