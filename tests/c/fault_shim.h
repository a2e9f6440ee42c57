/* Control of tests/c/fault_shim.c: arm `times` faulty reads of the model file after
 * letting `skip` reads through. */
#ifndef SUBSPEC_FAULT_SHIM_H
#define SUBSPEC_FAULT_SHIM_H

enum { FAULT_EIO = 1, FAULT_EOF = 2 };

void fault_shim_arm(int kind, long skip, long times);
/* Faulty reads still armed. */
long fault_shim_pending(void);

#endif
