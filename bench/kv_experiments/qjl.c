/* The measurement behind leaving out TurboQuant's QJL residual sketch: attention output
 * relative error at equal bits, MSE-optimal codes alone against (b-1)-bit codes plus the
 * 1-bit QJL sketch of the key residual (unbiased inner products); D = 128, 2048 keys,
 * 64 queries, normal data, query scale as given.
 *   cc -O2 qjl.c -lm && ./a.out 1 && ./a.out 3
 * Result (scale 1): tq3 keys 0.257 vs tq2+qjl keys 0.488 (values tq3); tq4 keys 0.131 vs
 * tq3+qjl keys 0.249 (values tq4); scale 3: 0.408 vs 0.886 and 0.193 vs 0.478. The sketch's
 * variance costs more than its unbiasedness gains, so clattn has no tq*+qjl format.
 * Standalone; not part of the build. */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#define D 128
#define L 2048
#define NQ 64
static unsigned long long s=88172645463325252ULL;
static double u01(void){s^=s<<13;s^=s>>7;s^=s<<17;return ((s>>11)+0.5)/9007199254740992.0;}
static double gauss(void){return sqrt(-2*log(u01()))*cos(2*M_PI*u01());}
static const double cb2[]={-1.510417608,-0.452780035,0.452780035,1.510417608};
static const double cb3[]={-2.151945705,-1.343909279,-0.756005281,-0.245094179,0.245094179,0.756005281,1.343909279,2.151945705};
static const double cb4[]={-2.732589571,-2.069017227,-1.618046386,-1.256231197,-0.942340456,-0.656759119,-0.388048299,-0.128395030,0.128395030,0.388048299,0.656759119,0.942340456,1.256231197,1.618046386,2.069017227,2.732589571};
static double K[L][D],V[L][D],Q[NQ][D],Kh[L][D],Vh[L][D],S[D][D],sg[D];
static double Rs[L], SR[L][D]; /* residual norm and sign(S r) */
static void fwht(double*x){for(int h=1;h<D;h*=2)for(int i=0;i<D;i+=2*h)for(int j=i;j<i+h;j++){double a=x[j],b=x[j+h];x[j]=a+b;x[j+h]=a-b;} for(int i=0;i<D;i++)x[i]/=sqrt(D);}
static void quant(const double*x,double*xh,int bits,int ls){const double*cb=bits==2?cb2:bits==3?cb3:cb4;int n=1<<bits;double y[D],c[D],nn=0;
 for(int i=0;i<D;i++){y[i]=x[i]*sg[i];} fwht(y); for(int i=0;i<D;i++)nn+=y[i]*y[i]; nn=sqrt(nn);
 double yc=0,cc=0; for(int i=0;i<D;i++){double z=y[i]*sqrt(D)/nn;int k=0;for(int q=1;q<n;q++)if(z>0.5*(cb[q-1]+cb[q]))k=q;c[i]=cb[k];yc+=y[i]*c[i];cc+=c[i]*c[i];}
 double g=ls?yc/cc:nn/sqrt(D); for(int i=0;i<D;i++)c[i]*=g; fwht(c); for(int i=0;i<D;i++)xh[i]=c[i]*sg[i];}
static void attn(int mode,const double*q,double*o){double sc[L],m=-1e300,l=0,sq[D];
 if(mode){for(int a=0;a<D;a++){sq[a]=0;for(int b=0;b<D;b++)sq[a]+=S[a][b]*q[b];}}
 for(int j=0;j<L;j++){double d=0;for(int i=0;i<D;i++)d+=q[i]*(mode>=0?Kh[j][i]:K[j][i]);
  if(mode==1){double e=0;for(int i=0;i<D;i++)e+=sq[i]*SR[j][i]; d+=Rs[j]*sqrt(M_PI/2)/D*e;}
  sc[j]=d/sqrt(D);if(sc[j]>m)m=sc[j];}
 for(int i=0;i<D;i++)o[i]=0;for(int j=0;j<L;j++){double p=exp(sc[j]-m);l+=p;for(int i=0;i<D;i++)o[i]+=p*(mode>=0?Vh[j][i]:V[j][i]);}for(int i=0;i<D;i++)o[i]/=l;}
static void run(const char*name,int kb,int vb,int qjl){
 for(int j=0;j<L;j++){quant(K[j],Kh[j],kb,1);quant(V[j],Vh[j],vb,1);
  if(qjl){double r[D],nr=0;for(int i=0;i<D;i++){r[i]=K[j][i]-Kh[j][i];nr+=r[i]*r[i];}Rs[j]=sqrt(nr);
   for(int a=0;a<D;a++){double t=0;for(int b=0;b<D;b++)t+=S[a][b]*r[b];SR[j][a]=t>=0?1:-1;}}}
 double eo=0,no=0,es=0; double o1[D],o2[D];
 for(int n=0;n<NQ;n++){attn(-1,Q[n],o1);attn(qjl,Q[n],o2);for(int i=0;i<D;i++){eo+=(o1[i]-o2[i])*(o1[i]-o2[i]);no+=o1[i]*o1[i];}}
 printf("%-22s attn out rel err %.5f\n",name,sqrt(eo/no));}
int main(int argc,char**argv){double temp=argc>1?atof(argv[1]):1;
 for(int i=0;i<D;i++)sg[i]=u01()<0.5?-1:1; for(int a=0;a<D;a++)for(int b=0;b<D;b++)S[a][b]=gauss();
 for(int j=0;j<L;j++)for(int i=0;i<D;i++){K[j][i]=gauss();V[j][i]=gauss();}
 for(int n=0;n<NQ;n++)for(int i=0;i<D;i++)Q[n][i]=gauss()*temp;
 printf("query scale %g\n",temp);
 run("tq2 K, tq2 V",2,2,0); run("tq3 K, tq3 V",3,3,0); run("tq2+qjl K, tq3 V",2,3,1);
 run("tq4 K, tq4 V",4,4,0); run("tq3+qjl K, tq4 V",3,4,1);}
